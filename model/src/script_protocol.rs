//! ADU's script protocol (`microsoft/script:1`), the parts that are plain data: how `arguments`
//! are split and their component tokens replaced, which action option a script gets, and where
//! its result file is. Each rule follows `src/extensions/step_handlers/script_handler/src/
//! script_handler.cpp` in ADU's repository (`PrepareScriptArguments`, `ScriptHandler_PerformAction`).

use crate::context::Component;
use crate::step::Action;

/// What the token replacement reads of a component: the host's [`Component`] and the SDK's.
pub trait ComponentFields {
    /// A top-level string field (`id`, `name`, `group`, `manufacturer`, `model`, `version`).
    fn top_field(&self, name: &str) -> Option<&str>;
    /// `properties.<path>` as a string, the path dotted through nested objects.
    fn property_at(&self, path: &str) -> Option<String>;
}

impl ComponentFields for Component {
    fn top_field(&self, name: &str) -> Option<&str> {
        self.field(name)
    }
    fn property_at(&self, path: &str) -> Option<String> {
        self.property_path(path).map(str::to_owned)
    }
}

/// What ADU passes for a component token when there is no component or no such field.
pub const NOT_AVAILABLE: &str = "n/a";

/// Splits `arguments` as ADU does: on single spaces, dropping empty pieces. Quotes mean nothing
/// (`ADUC::StringUtils::Split(fileArgs, ' ')`), so `'a b'` is two arguments, `'a` and `b'`.
pub fn split_arguments(arguments: &str) -> Vec<String> {
    arguments
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces ADU's component tokens with the selected component's values (`n/a` when there is
/// none, or it lacks the field). `--component-prop-val NAME` takes `properties.NAME` (a dotted
/// path, as parson's `json_object_dotget_string`) and consumes NAME; at the very end it is `n/a`.
pub fn substitute_tokens(
    args: Vec<String>,
    component: Option<&dyn ComponentFields>,
) -> Vec<String> {
    let field = |name: &str| {
        component
            .and_then(|c| c.top_field(name))
            .filter(|v| !v.is_empty())
            .unwrap_or(NOT_AVAILABLE)
            .to_owned()
    };
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = match a.as_str() {
            "--component-id-val" => field("id"),
            "--component-name-val" => field("name"),
            "--component-manufacturer-val" => field("manufacturer"),
            "--component-model-val" => field("model"),
            "--component-version-val" => field("version"),
            "--component-group-val" => field("group"),
            "--component-prop-val" => match it.next() {
                Some(path) => component
                    .and_then(|c| c.property_at(&path))
                    .unwrap_or_else(|| NOT_AVAILABLE.to_owned()),
                None => NOT_AVAILABLE.to_owned(),
            },
            _ => a,
        };
        out.push(v);
    }
    out
}

/// The action option for `apiVersion`: absent or "1.0" `--action-<name>`, "1.1" `--action <name>`,
/// any other value none at all (ADU's `ScriptHandler_PerformAction` has no branch for it).
pub fn action_option(api_version: Option<&str>, action: Action) -> Vec<String> {
    match api_version {
        None | Some("1.0") => vec![format!("--action-{}", action.name())],
        Some("1.1") => vec!["--action".into(), action.name().into()],
        Some(_) => Vec::new(),
    }
}

/// The result file a script writes for `action`, in its work folder:
/// `action_<action>_aduc_result.json` with ADU's action name (`action_is-installed_...`).
pub fn result_file_name(action: Action) -> String {
    format!("action_{}_aduc_result.json", action.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp() -> Component {
        serde_json::from_value(serde_json::json!({
            "id": "motor-0", "name": "left-motor", "group": "motors",
            "properties": {"path": "/dev/m0", "nested": {"a": "deep"}}
        }))
        .unwrap()
    }

    #[test]
    fn arguments_split_on_single_spaces_and_quotes_mean_nothing() {
        assert_eq!(
            split_arguments("--a  b 'two words' \tx"),
            ["--a", "b", "'two", "words'", "\tx"]
        );
        assert!(split_arguments("").is_empty());
    }

    #[test]
    fn component_tokens_take_the_components_values_or_na() {
        let args = split_arguments(
            "--component-name --component-name-val --component-prop path --component-prop-val path --x --component-model-val",
        );
        assert_eq!(
            substitute_tokens(args.clone(), Some(&comp() as &dyn ComponentFields)),
            [
                "--component-name",
                "left-motor",
                "--component-prop",
                "path",
                "/dev/m0",
                "--x",
                "n/a"
            ]
        );
        assert_eq!(
            substitute_tokens(args, None),
            [
                "--component-name",
                "n/a",
                "--component-prop",
                "path",
                "n/a",
                "--x",
                "n/a"
            ]
        );
        let nested = split_arguments("--component-prop-val nested.a --component-prop-val");
        assert_eq!(
            substitute_tokens(nested, Some(&comp() as &dyn ComponentFields)),
            ["deep", "n/a"]
        );
    }

    #[test]
    fn the_action_option_follows_api_version() {
        assert_eq!(action_option(None, Action::Install), ["--action-install"]);
        assert_eq!(
            action_option(Some("1.0"), Action::IsInstalled),
            ["--action-is-installed"]
        );
        assert_eq!(
            action_option(Some("1.1"), Action::Apply),
            ["--action", "apply"]
        );
        assert!(action_option(Some("2.0"), Action::Apply).is_empty());
    }

    #[test]
    fn result_files_use_adus_action_names() {
        assert_eq!(
            result_file_name(Action::IsInstalled),
            "action_is-installed_aduc_result.json"
        );
    }
}
