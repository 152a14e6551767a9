//! The console's routes: each page and the fragment it refreshes itself from, the login, and
//! the operator's actions (each behind the CSRF rule and the operator role).

use super::accounts::Role;
use super::session::{self, Session};
use super::tls::ClientName;
use super::view::{self, DeviceRow, DeviceView, RolloutView, PER_PAGE};
use super::Console;
use crate::operate::{self, Control, NewRollout, OperateError};
use crate::store::AuditEntry;
use askama::Template;
use axum::extract::{Form, FromRequestParts, Multipart, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use std::sync::Arc;

type Shared = State<Arc<Console>>;

/// The routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices", get(devices))
        .route("/devices/live", get(devices_live))
        .route("/devices/{id}", get(device))
        .route("/devices/{id}/live", get(device_live))
        .route("/rollouts", get(rollouts).post(create_rollout))
        .route("/rollouts/{id}", get(rollout))
        .route("/rollouts/{id}/live", get(rollout_live))
        .route("/rollouts/{id}/{action}", post(control))
        .route("/static/console.css", get(css))
        .route("/static/live.js", get(live_js))
        .with_state(console)
}

/// A page refused or failed: the status and a line of text (escaped like everything else).
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let page = MessagePage {
            title: self.0.canonical_reason().unwrap_or("error"),
            message: &self.1,
        };
        (
            self.0,
            Html(page.render().unwrap_or_else(|_| self.1.clone())),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<askama::Error> for Refusal {
    fn from(e: askama::Error) -> Self {
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<OperateError> for Refusal {
    fn from(e: OperateError) -> Self {
        let status = match e {
            OperateError::NoRollout(_) => StatusCode::NOT_FOUND,
            OperateError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        };
        Refusal(status, e.to_string())
    }
}

/// A logged-in request: its session (a page without one goes to the login).
struct Authed(Session);

impl FromRequestParts<Arc<Console>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        let cookie = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok());
        match c.sessions.of(cookie) {
            Some(s) => Ok(Authed(s)),
            None if parts.uri.path().ends_with("/live") => {
                Err(StatusCode::UNAUTHORIZED.into_response())
            }
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// The checks before a change: the role, and the CSRF rule.
fn may_change(s: &Session, csrf: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    if s.role != Role::Operator {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("{} is a viewer: only an operator may do this", s.user),
        ));
    }
    from_own_page(s, csrf, headers)
}

/// The CSRF rule every form that changes something passes (logging out too).
fn from_own_page(s: &Session, csrf: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header(header::HOST).unwrap_or("");
    if !session::may_change(s, csrf, header(header::ORIGIN), host) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: the request did not come from this console's own page (CSRF)".into(),
        ));
    }
    Ok(())
}

/// The header every logged-in page shows.
struct Nav {
    user: String,
    role: &'static str,
    csrf: String,
    operator: bool,
}

impl Nav {
    fn of(s: &Session) -> Nav {
        Nav {
            user: s.user.clone(),
            role: s.role.name(),
            csrf: s.csrf.clone(),
            operator: s.role == Role::Operator,
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    problem: &'a str,
}

/// The login form; a connection with a client certificate naming an account that logs in by
/// certificate is logged in at once instead.
async fn login_page(
    State(c): Shared,
    Extension(ClientName(name)): Extension<ClientName>,
) -> Result<Response, Refusal> {
    let problem = match name {
        Some(name) => match c.accounts.by_certificate(&name) {
            Some(role) => return logged_in(&c, &name, role, "client certificate").await,
            None => format!("the client certificate's name `{name}` is no certificate account"),
        },
        None => String::new(),
    };
    Ok(Html(LoginPage { problem: &problem }.render()?).into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login(State(c): Shared, Form(f): Form<LoginForm>) -> Result<Response, Refusal> {
    let accounts = c.clone();
    let (user, password) = (f.user.clone(), f.password);
    let role = tokio::task::spawn_blocking(move || accounts.accounts.verify(&user, &password))
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let Some(role) = role else {
        let page = LoginPage {
            problem: "wrong name or password",
        };
        return Ok((StatusCode::UNAUTHORIZED, Html(page.render()?)).into_response());
    };
    logged_in(&c, &f.user, role, "password").await
}

/// Starts `user`'s session, writes the login to the audit log (`how`: password or client
/// certificate) and sends the browser to the fleet with the session's cookie.
async fn logged_in(c: &Console, user: &str, role: Role, how: &str) -> Result<Response, Refusal> {
    let token = c.sessions.start(user, role);
    let detail = format!("{} ({how})", role.name());
    audit(c, &format!("console:{user}"), "login", None, &detail).await;
    Ok((
        [(header::SET_COOKIE, session::set_cookie(&token))],
        Redirect::to("/devices"),
    )
        .into_response())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(c): Shared,
    Authed(s): Authed,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    from_own_page(&s, &f.csrf, &headers)?;
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    c.sessions.end(cookie);
    Ok((
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response())
}

/// Writes an action to the audit log; a failure to is logged, not shown (the action is done).
async fn audit(c: &Console, who: &str, action: &str, rollout: Option<&str>, detail: &str) {
    let entry = AuditEntry {
        at_ms: sandstep_transport::clock::now_ms(),
        who: who.to_owned(),
        action: action.to_owned(),
        rollout: rollout.map(str::to_owned),
        detail: detail.to_owned(),
    };
    if let Err(e) = c.store.lock().await.add_audit(&entry).await {
        tracing::warn!("console: audit log: {e}");
    }
}

#[derive(Deserialize, Default)]
struct FleetQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage<'a> {
    nav: Nav,
    q: &'a str,
    table: DevicesTable<'a>,
}

#[derive(Template)]
#[template(path = "devices_table.html")]
struct DevicesTable<'a> {
    rows: Vec<&'a DeviceRow>,
    total: usize,
    page: usize,
    pages: usize,
    q: &'a str,
    live: String,
    all: usize,
}

fn devices_table<'a>(rows: &'a [DeviceRow], q: &'a FleetQuery) -> DevicesTable<'a> {
    let (shown, total) = view::search(rows, &q.q, q.page);
    DevicesTable {
        rows: shown,
        total,
        page: q.page,
        pages: total.div_ceil(PER_PAGE).max(1),
        q: &q.q,
        live: format!("/devices/live?{}", query_string(&q.q, q.page)),
        all: rows.len(),
    }
}

/// `q=...&page=...`, percent-encoded.
fn query_string(q: &str, page: usize) -> String {
    format!("q={}&page={page}", percent_encoded(q))
}

/// `s` percent-encoded but for the unreserved characters (a query value or a path segment).
fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn devices(
    State(c): Shared,
    Authed(s): Authed,
    Query(q): Query<FleetQuery>,
) -> Result<Html<String>, Refusal> {
    let rows = c.rows();
    let page = DevicesPage {
        nav: Nav::of(&s),
        q: &q.q,
        table: devices_table(&rows, &q),
    };
    Ok(Html(page.render()?))
}

async fn devices_live(
    State(c): Shared,
    Authed(_): Authed,
    Query(q): Query<FleetQuery>,
) -> Result<Html<String>, Refusal> {
    let rows = c.rows();
    Ok(Html(devices_table(&rows, &q).render()?))
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    nav: Nav,
    detail: DeviceDetail,
}

#[derive(Template)]
#[template(path = "device_detail.html")]
struct DeviceDetail {
    v: DeviceView,
    live: String,
}

async fn device_detail(c: &Console, id: &str) -> Result<DeviceDetail, Refusal> {
    let record = c.store.lock().await.get(id).await?;
    let Some(r) = record else {
        return Err(Refusal(StatusCode::NOT_FOUND, format!("no device `{id}`")));
    };
    Ok(DeviceDetail {
        v: view::device_view(id, &r, sandstep_transport::clock::now_ms()),
        live: format!("/devices/{}/live", percent_encoded(id)),
    })
}

async fn device(
    State(c): Shared,
    Authed(s): Authed,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let detail = device_detail(&c, &id).await?;
    Ok(Html(
        DevicePage {
            nav: Nav::of(&s),
            detail,
        }
        .render()?,
    ))
}

async fn device_live(
    State(c): Shared,
    Authed(_): Authed,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    Ok(Html(device_detail(&c, &id).await?.render()?))
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    nav: Nav,
    rollouts: Vec<RolloutView>,
}

async fn rollouts(State(c): Shared, Authed(s): Authed) -> Result<Html<String>, Refusal> {
    let mut views = Vec::new();
    {
        let mut store = c.store.lock().await;
        for (r, _) in store.rollouts().await?.into_iter().rev() {
            let members = store.members(&r).await?;
            views.push(view::rollout_view(
                &r,
                &crate::rollout::summary(&r, &members),
            ));
        }
    }
    Ok(Html(
        RolloutsPage {
            nav: Nav::of(&s),
            rollouts: views,
        }
        .render()?,
    ))
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    nav: Nav,
    detail: RolloutDetail,
}

#[derive(Template)]
#[template(path = "rollout_detail.html")]
struct RolloutDetail {
    r: RolloutView,
    audit: Vec<AuditLine>,
    live: String,
    operator: bool,
    csrf: String,
}

struct AuditLine {
    when: String,
    who: String,
    action: String,
    detail: String,
}

async fn rollout_detail(c: &Console, id: &str, s: &Session) -> Result<RolloutDetail, Refusal> {
    let mut store = c.store.lock().await;
    let Some((r, _)) = store.rollout(id).await? else {
        return Err(Refusal(StatusCode::NOT_FOUND, format!("no rollout `{id}`")));
    };
    let members = store.members(&r).await?;
    let audit = store
        .audit(Some(id), 50)
        .await?
        .into_iter()
        .map(|e| AuditLine {
            when: sandstep_transport::clock::iso8601_utc(e.at_ms / 1000),
            who: e.who,
            action: e.action,
            detail: e.detail,
        })
        .collect();
    Ok(RolloutDetail {
        r: view::rollout_view(&r, &crate::rollout::summary(&r, &members)),
        audit,
        live: format!("/rollouts/{}/live", percent_encoded(id)),
        operator: s.role == Role::Operator,
        csrf: s.csrf.clone(),
    })
}

async fn rollout(
    State(c): Shared,
    Authed(s): Authed,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let detail = rollout_detail(&c, &id, &s).await?;
    Ok(Html(
        RolloutPage {
            nav: Nav::of(&s),
            detail,
        }
        .render()?,
    ))
}

async fn rollout_live(
    State(c): Shared,
    Authed(s): Authed,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    Ok(Html(rollout_detail(&c, &id, &s).await?.render()?))
}

async fn control(
    State(c): Shared,
    Authed(s): Authed,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    may_change(&s, &f.csrf, &headers)?;
    let what = Control::parse(&action)
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("no action `{action}`")))?;
    operate::control(&mut *c.store.lock().await, &id, what, &s.who()).await?;
    Ok(Redirect::to(&format!("/rollouts/{}", percent_encoded(&id))).into_response())
}

/// The new-rollout form's fields, read from its multipart body.
#[derive(Default)]
struct NewRolloutForm {
    csrf: String,
    id: String,
    group: String,
    phases: String,
    soak: String,
    max_failure_rate: String,
    deployment: Vec<u8>,
}

async fn read_form(mut body: Multipart) -> Result<NewRolloutForm, Refusal> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        Refusal(StatusCode::BAD_REQUEST, format!("the form: {e}"))
    };
    let mut f = NewRolloutForm::default();
    while let Some(field) = body.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "deployment" {
            f.deployment = field.bytes().await.map_err(bad)?.to_vec();
            continue;
        }
        let text = field.text().await.map_err(bad)?;
        match name.as_str() {
            "csrf" => f.csrf = text,
            "id" => f.id = text.trim().to_owned(),
            "group" => f.group = text.trim().to_owned(),
            "phases" => f.phases = text,
            "soak" => f.soak = text,
            "max_failure_rate" => f.max_failure_rate = text.trim().to_owned(),
            _ => {}
        }
    }
    Ok(f)
}

/// The rollout a submitted form describes (a refusal names the field).
fn new_rollout(f: NewRolloutForm) -> Result<NewRollout, Refusal> {
    use crate::rollout::{parse_duration, parse_percent, parse_phases};
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    let text = String::from_utf8(f.deployment)
        .map_err(|_| bad("the deployment file is not UTF-8 text".into()))?;
    let deployment = sandstep_model::deployment::Deployment::parse(&text)
        .map_err(|e| bad(format!("the deployment file: {e}")))?;
    let id = if f.id.is_empty() {
        format!("ro-{}", sandstep_transport::clock::now_ms())
    } else {
        f.id
    };
    Ok(NewRollout {
        id,
        group: f.group,
        deployment,
        phases: parse_phases(&f.phases).map_err(|e| bad(e.to_string()))?,
        max_failure_rate: (!f.max_failure_rate.is_empty())
            .then(|| parse_percent("max failure rate", &f.max_failure_rate))
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        min_devices: 1,
        soak_ms: parse_duration("soak", &f.soak).map_err(|e| bad(e.to_string()))?,
    })
}

async fn create_rollout(
    State(c): Shared,
    Authed(s): Authed,
    headers: HeaderMap,
    body: Multipart,
) -> Result<Response, Refusal> {
    let form = read_form(body).await?;
    may_change(&s, &form.csrf, &headers)?;
    let new = new_rollout(form)?;
    let (r, _) = operate::create(&mut *c.store.lock().await, new, &s.who()).await?;
    Ok(Redirect::to(&format!("/rollouts/{}", percent_encoded(&r.id))).into_response())
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css")],
        include_str!("../../static/console.css"),
    )
}

async fn live_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript")],
        include_str!("../../static/live.js"),
    )
}
