//! The A/B image handlers, `sandstep/firmware:1` and `microsoft/swupdate:1` (whose one file is
//! the image, [`crate::swupdate::v1_image`]), and `sandstep/component:1`: `installedCriteria`
//! (the new version) is required; firmware's image is `imageFileName`, else the step's only file.

/// A broken rule of an image or component step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRule {
    /// `installedCriteria` is missing.
    NoCriteria,
    /// Several files and no `imageFileName` (how many).
    WhichImage(usize),
    /// `imageFileName` names no step file.
    NoSuchImage(String),
}

impl std::fmt::Display for VersionRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionRule::NoCriteria => {
                f.write_str("handlerProperties.installedCriteria (the new version) is required")
            }
            VersionRule::WhichImage(n) => write!(
                f,
                "step has {n} files; say which is the image with handlerProperties.imageFileName"
            ),
            VersionRule::NoSuchImage(n) => {
                write!(
                    f,
                    "handlerProperties.imageFileName `{n}` is not one of the step's files"
                )
            }
        }
    }
}

impl std::error::Error for VersionRule {}

/// The version the step installs.
pub fn criteria(installed_criteria: Option<&str>) -> Result<&str, VersionRule> {
    installed_criteria.ok_or(VersionRule::NoCriteria)
}

/// Firmware's image among `files`: `image_file_name`, else the only file.
pub fn image_file<'a>(
    image_file_name: Option<&str>,
    files: &[&'a str],
) -> Result<&'a str, VersionRule> {
    crate::named_or_only(image_file_name, files).map_err(|p| match p {
        crate::Pick::NoSuch(n) => VersionRule::NoSuchImage(n),
        crate::Pick::Several(n) => VersionRule::WhichImage(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_step_names_its_version_and_its_image() {
        assert_eq!(criteria(Some("2.0")), Ok("2.0"));
        assert_eq!(criteria(None), Err(VersionRule::NoCriteria));
        assert_eq!(image_file(None, &["fw.img"]), Ok("fw.img"));
        assert_eq!(
            image_file(Some("fw.img"), &["fw.img", "fw.img.blockindex"]),
            Ok("fw.img")
        );
        assert_eq!(
            image_file(None, &["a", "b"]),
            Err(VersionRule::WhichImage(2))
        );
        assert_eq!(
            image_file(Some("x"), &["a"]),
            Err(VersionRule::NoSuchImage("x".into()))
        );
    }
}
