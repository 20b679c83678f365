//! The cases. Each returns `Ok(())` or why it failed, in words that point
//! at the likely cause; each removes its sockets before returning (its rows
//! go at the suite's clean-up).

use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use serde_json::{Value, json};

use super::Suite;
use super::client::{self, Handshake, STEP, Transport};
use super::fixtures::{Guest, GuestOrg, Session};
use sockgate::session::{self, UserId};

const AUTHENTICATION_REQUIRED: &str = "Authentication required";
const INVALID_SESSION: &str = "Invalid session";
const SESSION_EXPIRED: &str = "Session expired";
const GUEST_ACCESS_REVOKED: &str = "Guest access revoked";

/// A secret no deployment uses, to forge signatures with.
const WRONG_SECRET: &str = "sockgate-conformance-not-the-secret";

const HOUR: Duration = Duration::from_secs(3600);

fn with_cookie(session: &Session) -> Handshake {
    Handshake {
        cookie: Some(session.cookie.clone()),
        ..Default::default()
    }
}

/// Why a session the suite wrote may have been refused.
fn hint(refusal: &str) -> &'static str {
    if refusal.contains(INVALID_SESSION) {
        " (is --secret one of the deployment's SESSION_SECRET values, and --cookie-name its cookie?)"
    } else if refusal.contains(SESSION_EXPIRED) {
        " (is --database-url the deployment's session database and --session-table/--session-schema its table? are this machine's and the server's clocks in sync?)"
    } else if refusal.contains("transport error") {
        " (is --url the deployment's base URL?)"
    } else {
        ""
    }
}

async fn refused(s: &Suite, t: Transport, hs: &Handshake, message: &str) -> Result<(), String> {
    let mut c = client::connect(&s.opts.url, t, hs).await;
    let result = c.expect_refused(message).await;
    c.close().await;
    // A forged value is the only one that should read as invalid: anything
    // else refused as invalid was signed with a secret the server lacks.
    result.map_err(
        |e| match message != INVALID_SESSION && e.contains(INVALID_SESSION) {
            true => format!("{e}{}", hint(INVALID_SESSION)),
            false => e,
        },
    )
}

/// Connects with `hs` and checks that `whoami` names `user` and `sid`
/// (from the stored session, whatever the client claimed).
async fn connects_as(
    s: &Suite,
    t: Transport,
    hs: &Handshake,
    user: &str,
    sid: &str,
) -> Result<(), String> {
    let mut c = client::connect(&s.opts.url, t, hs).await;
    let result = async {
        c.outcome()
            .await
            .map_err(|e| format!("a valid session was refused: {e}{}", hint(&e)))?;
        let me = c.whoami().await?;
        let expected = json!({ "userId": user, "sessionId": sid, "authenticated": true });
        if me != expected {
            return Err(format!("whoami answered {me}, expected {expected}"));
        }
        Ok(())
    }
    .await;
    c.close().await;
    result
}

fn logged_out_sess(passport: Option<Value>) -> Value {
    let mut sess = json!({
        "cookie": { "originalMaxAge": 3_600_000, "httpOnly": true, "path": "/" }
    });
    if let Some(p) = passport {
        sess["passport"] = p;
    }
    sess
}

fn now_secs() -> i64 {
    Utc::now().timestamp()
}

pub async fn no_session_id(s: &Suite, t: Transport) -> Result<(), String> {
    refused(s, t, &Handshake::default(), AUTHENTICATION_REQUIRED)
        .await
        .map_err(|e| format!("no cookie, no auth: {e}"))?;
    // A user id the client sends is never trusted.
    let hs = Handshake {
        auth: Some(json!({ "userId": s.fixtures.user("user") })),
        ..Default::default()
    };
    refused(s, t, &hs, AUTHENTICATION_REQUIRED)
        .await
        .map_err(|e| format!("auth with a userId and no sessionId: {e}"))
}

pub async fn bad_signature(s: &Suite, t: Transport) -> Result<(), String> {
    let live = s.fixtures.logged_in(&s.fixtures.user("user"), HOUR).await?;
    let sid = &live.sid;
    // The sid with its last character changed, under the real signature.
    let mut tampered_sid = sid.clone();
    let last = tampered_sid.pop().unwrap_or('A');
    tampered_sid.push(if last == 'A' { 'B' } else { 'A' });
    let signature = live.signed.rsplit_once('.').map_or("", |(_, sig)| sig);
    let forged = [
        (
            "signed with another secret",
            format!("s:{}", sockgate::session::sign(sid, WRONG_SECRET)),
        ),
        (
            "session id altered under its signature",
            format!("s:{tampered_sid}.{signature}"),
        ),
        ("unsigned (no s: prefix)", sid.clone()),
        ("signature missing", format!("s:{sid}")),
    ];
    for (what, signed) in forged {
        let hs = Handshake {
            cookie: Some(s.fixtures.cookie(&signed)),
            ..Default::default()
        };
        refused(s, t, &hs, INVALID_SESSION)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

pub async fn unknown_sid(s: &Suite, t: Transport) -> Result<(), String> {
    let signed = s.fixtures.sign(&sockgate::session::new_sid());
    let hs = Handshake {
        cookie: Some(s.fixtures.cookie(&signed)),
        ..Default::default()
    };
    refused(s, t, &hs, SESSION_EXPIRED).await
}

pub async fn expired_session(s: &Suite, t: Transport) -> Result<(), String> {
    let user = UserId::new(s.fixtures.user("user"));
    let (_, sess) = session::new_session_json(&user, Utc::now(), HOUR);
    let expired = s.fixtures.raw(&sess, now_secs() - 3600).await?;
    refused(s, t, &with_cookie(&expired), SESSION_EXPIRED)
        .await
        .map_err(|e| format!("a session that expired an hour ago: {e}"))
}

pub async fn no_passport_user(s: &Suite, t: Transport) -> Result<(), String> {
    for (what, passport) in [
        ("a session without passport", None),
        (
            "a session after passport's logout (passport: {})",
            Some(json!({})),
        ),
    ] {
        let anon = s
            .fixtures
            .raw(&logged_out_sess(passport), now_secs() + 3600)
            .await?;
        refused(s, t, &with_cookie(&anon), AUTHENTICATION_REQUIRED)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

pub async fn valid_cookie(s: &Suite, t: Transport) -> Result<(), String> {
    let user = s.fixtures.user("user");
    let live = s.fixtures.logged_in(&user, HOUR).await?;
    // A second valid session in `auth` and a made-up user id: the cookie
    // decides, and no client-sent user id is believed.
    let decoy = s
        .fixtures
        .logged_in(&s.fixtures.user("decoy"), HOUR)
        .await?;
    let hs = Handshake {
        cookie: Some(live.cookie.clone()),
        auth: Some(json!({ "userId": "evil", "sessionId": decoy.signed })),
        ..Default::default()
    };
    connects_as(s, t, &hs, &user, &live.sid).await
}

pub async fn auth_session_id(s: &Suite, t: Transport) -> Result<(), String> {
    let user = s.fixtures.user("user");
    let live = s.fixtures.logged_in(&user, HOUR).await?;
    let encoded = sockgate::session::cookie_value(&live.signed);
    for (what, value) in [("raw", live.signed.clone()), ("URL-encoded", encoded)] {
        let hs = Handshake {
            auth: Some(json!({ "userId": "evil", "sessionId": value })),
            ..Default::default()
        };
        connects_as(s, t, &hs, &user, &live.sid)
            .await
            .map_err(|e| format!("auth.sessionId {what}: {e}"))?;
    }
    Ok(())
}

/// A session expiring 2 s from now connects now, and is refused once its
/// `expire` second has passed (connect-pg-simple: live while
/// `expire >= ceil(now)`), with a second's margin for clock skew.
pub async fn expiry_boundary(s: &Suite) -> Result<(), String> {
    let user = s.fixtures.user("user");
    let (expire, sess) =
        session::new_session_json(&UserId::new(&user), Utc::now(), Duration::from_secs(2));
    let short = s.fixtures.raw(&sess, expire).await?;
    for t in Transport::ALL {
        connects_as(s, t, &with_cookie(&short), &user, &short.sid)
            .await
            .map_err(|e| format!("{t}, before expiry: {e}"))?;
    }
    // A re-check while those sockets were open may have extended the
    // session (the refresh window); wait for the expiry the row now has.
    let mut waited = Duration::ZERO;
    loop {
        let expire = s
            .fixtures
            .expire_of(&short.sid)
            .await?
            .ok_or("the session row disappeared before it expired")?;
        let target_ms = (expire + 1) * 1000;
        let left_ms = target_ms - Utc::now().timestamp_millis();
        if left_ms <= 0 {
            break;
        }
        let left = Duration::from_millis(left_ms as u64);
        waited += left;
        if waited > Duration::from_secs(30) {
            return Err(format!(
                "the session keeps being extended (expire now {expire}); it was written to expire at {}",
                short.expire_secs
            ));
        }
        tokio::time::sleep(left).await;
    }
    for t in Transport::ALL {
        refused(s, t, &with_cookie(&short), SESSION_EXPIRED)
            .await
            .map_err(|e| format!("{t}, one second after expiry: {e}"))?;
    }
    Ok(())
}

async fn get_status(s: &Suite, t: Transport, origin: &str) -> Result<u16, String> {
    let mut req = s.http.get(s.engine_url(t)).header("Origin", origin);
    if t == Transport::Websocket {
        let mut key = [0u8; 16];
        rand::rng().fill_bytes(&mut key);
        req = req
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                base64::engine::general_purpose::STANDARD.encode(key),
            );
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("raw {t} request: {e}"))?;
    Ok(resp.status().as_u16())
}

pub async fn origin_allowed(s: &Suite, t: Transport, origin: &str) -> Result<(), String> {
    // The raw request the denied case sends is well-formed: allowed, it
    // gets the engine.io handshake (polling) or the upgrade (websocket).
    let expected = match t {
        Transport::Polling => 200,
        Transport::Websocket => 101,
    };
    match get_status(s, t, origin).await? {
        status if status == expected => {}
        403 => {
            return Err(format!(
                "raw {t} request from {origin}: HTTP 403 (does the deployment's ALLOWED_ORIGINS include {origin}?)"
            ));
        }
        status => {
            return Err(format!(
                "raw {t} request from {origin}: HTTP {status}, expected {expected}"
            ));
        }
    }
    let user = s.fixtures.user("user");
    let live = s.fixtures.logged_in(&user, HOUR).await?;
    let hs = Handshake {
        cookie: Some(live.cookie.clone()),
        origin: Some(origin.to_owned()),
        ..Default::default()
    };
    connects_as(s, t, &hs, &user, &live.sid).await
}

pub async fn origin_denied(s: &Suite, t: Transport, origin: &str) -> Result<(), String> {
    let what = match t {
        Transport::Polling => "polling request",
        Transport::Websocket => "websocket upgrade",
    };
    match get_status(s, t, origin).await? {
        403 => {}
        status => return Err(format!("{what} from {origin}: HTTP {status}, expected 403")),
    }
    // And a client with a valid session from there never gets a socket.
    let live = s.fixtures.logged_in(&s.fixtures.user("user"), HOUR).await?;
    let hs = Handshake {
        cookie: Some(live.cookie.clone()),
        origin: Some(origin.to_owned()),
        ..Default::default()
    };
    let mut c = client::connect(&s.opts.url, t, &hs).await;
    let outcome = c.outcome().await;
    c.close().await;
    match outcome {
        Ok(()) => Err(format!(
            "a {t} client with a valid session from {origin} connected"
        )),
        Err(_) => Ok(()),
    }
}

/// POSTs `body` (JSON, if any) with a `Cookie` and an `Origin` header (if
/// any): the status and the answer, as JSON when it parses, else as text.
/// The tests' admin-route calls use it too.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = http.post(url);
    if let Some(cookie) = cookie {
        req = req.header("Cookie", cookie);
    }
    if let Some(origin) = origin {
        req = req.header("Origin", origin);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("POST {url}: reading the body: {e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A guest id that names no guest.
const NO_SUCH_GUEST: i64 = i64::MAX;

pub async fn origin_denied_admin_route(s: &Suite, origin: &str) -> Result<(), String> {
    // Without a session the route answers 401; from a denied origin the
    // Origin check must answer first.
    let (status, body) = post_json(
        &s.http,
        &s.admin_url(NO_SUCH_GUEST),
        None,
        Some(origin),
        None,
    )
    .await?;
    if status != 403 {
        return Err(format!(
            "POST to the admin route from {origin}: HTTP {status} {body}, expected 403"
        ));
    }
    Ok(())
}

/// The session-expired wait, with a message that says which limit ran out.
pub async fn session_deleted(s: &Suite) -> Result<(), String> {
    let user = s.fixtures.user("user");
    let live = s.fixtures.logged_in(&user, HOUR).await?;
    let mut clients = Vec::new();
    for t in Transport::ALL {
        let mut c = client::connect(&s.opts.url, t, &with_cookie(&live)).await;
        if let Err(e) = c.outcome().await {
            c.close().await;
            for (_, c) in clients {
                client::SioClient::close(c).await;
            }
            return Err(format!("{t}: a valid session was refused: {e}{}", hint(&e)));
        }
        clients.push((t, c));
    }
    s.fixtures.destroy(&live.sid).await?;
    let (budget, capped) = s.recheck_budget();
    let waits = clients.iter_mut().map(|(t, c)| async move {
        let t = *t;
        (
            t,
            c.expect_event_then_closed("session_expired", budget).await,
        )
    });
    let results = futures_util::future::join_all(waits).await;
    let mut problems = Vec::new();
    for (t, result) in results {
        match result {
            Ok(payload) if payload["reason"] == "deleted" => {}
            Ok(payload) => problems.push(format!(
                "{t}: session_expired said {payload}, expected reason \"deleted\""
            )),
            Err(e) if e.starts_with("no session_expired") && capped => problems.push(format!(
                "{t}: no session_expired within --timeout {}; the deployment re-checks every {} (--check-interval), which can take up to {}: raise --timeout",
                humantime::format_duration(budget),
                humantime::format_duration(s.opts.check_interval),
                humantime::format_duration(s.opts.check_interval.mul_f64(1.1) + Duration::from_secs(3)),
            )),
            Err(e) if e.starts_with("no session_expired") => problems.push(format!(
                "{t}: no session_expired within {} (1.1 x --check-interval {} + 3 s) of deleting the session row",
                humantime::format_duration(budget),
                humantime::format_duration(s.opts.check_interval),
            )),
            Err(e) => problems.push(format!("{t}: {e}")),
        }
    }
    for (_, c) in clients {
        c.close().await;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn expect_refusal(what: &str, got: (u16, Value), status: u16) -> Result<(), String> {
    if got.0 == status && got.1["success"] == false {
        Ok(())
    } else {
        Err(format!(
            "{what}: HTTP {} {}, expected {status} with success false",
            got.0, got.1
        ))
    }
}

pub async fn admin_route_refusals(s: &Suite, org: &GuestOrg) -> Result<(), String> {
    let guest = org.guests.first().ok_or("no guest fixture")?;
    let url = s.admin_url(&guest.id);
    expect_refusal(
        "without a session",
        post_json(&s.http, &url, None, None, None).await?,
        401,
    )?;
    expect_refusal(
        "an unknown guest",
        post_json(
            &s.http,
            &s.admin_url(NO_SUCH_GUEST),
            Some(&org.admin.cookie),
            None,
            None,
        )
        .await?,
        404,
    )?;
    let outsider = s
        .fixtures
        .logged_in(&s.fixtures.user("outsider"), HOUR)
        .await?;
    expect_refusal(
        "a caller who is not an admin of the guest's organization",
        post_json(&s.http, &url, Some(&outsider.cookie), None, None).await?,
        403,
    )
}

pub async fn guest_lock(
    s: &Suite,
    t: Transport,
    org: &GuestOrg,
    guest: &Guest,
) -> Result<(), String> {
    let mut c = client::connect(&s.opts.url, t, &with_cookie(&guest.session)).await;
    let result = async {
        c.outcome()
            .await
            .map_err(|e| format!("the guest was refused before the lock: {e}{}", hint(&e)))?;
        let reason = format!("sockgate conformance run {}", s.fixtures.run);
        let (status, body) = post_json(
            &s.http,
            &s.admin_url(&guest.id),
            Some(&org.admin.cookie),
            None,
            Some(json!({ "reason": reason })),
        )
        .await?;
        let expected = json!({ "success": true, "disconnected": 1 });
        if status != 200 || body != expected {
            return Err(format!(
                "admin route answered HTTP {status} {body}, expected 200 {expected}"
            ));
        }
        let payload = c.expect_event_then_closed("guest:locked", STEP).await?;
        if payload["reason"] != "soft_locked" || payload["message"] != reason.as_str() {
            return Err(format!(
                "guest:locked said {payload}, expected reason \"soft_locked\" and message {reason:?}"
            ));
        }
        Ok(())
    }
    .await;
    c.close().await;
    result?;
    refused(s, t, &with_cookie(&guest.session), GUEST_ACCESS_REVOKED)
        .await
        .map_err(|e| format!("reconnecting after the lock: {e}"))
}
