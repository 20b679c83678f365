//! The browser client's routes: static files and the development sign-in
//! on SQLite; neither on PostgreSQL (unless WEB_DIR is set).

mod common;

use common::client::{self, Options, Transport};
use common::{Backend, TestEnv};
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serves_the_client_and_a_dev_login_whose_cookie_connects() {
    // The page's origin (the server's own URL in development; the test
    // listens on port 0, so name one).
    let origin = "http://app.test:8080".to_owned();
    let env = TestEnv::start_with(Backend::Sqlite, |c| {
        c.allowed_origins = Some(origin.clone())
    })
    .await
    .unwrap();
    let url = env.url();

    let index = http().get(format!("{url}/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert!(index.text().await.unwrap().contains("/login.html"));
    for path in [
        "/login.html",
        "/app.html",
        "/app.js",
        "/vendor/socket.io.min.js",
    ] {
        let res = http().get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let missing = http().get(format!("{url}/nope.html")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let post_file = http().post(format!("{url}/app.html")).send().await.unwrap();
    assert_eq!(post_file.status(), StatusCode::NOT_FOUND);

    // The login form's post, from the page's own origin.
    let res = http()
        .post(format!("{url}/dev/login"))
        .header("Origin", &origin)
        .form(&[("user", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/app.html");
    let set_cookie = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let (pair, attributes) = set_cookie.split_once("; ").unwrap();
    assert_eq!(attributes, "Path=/; HttpOnly; SameSite=Lax");
    let value = pair.strip_prefix("connect.sid=s%3A").expect(&set_cookie);
    assert!(!value.is_empty());

    let mut socket = client::connect(
        &url,
        Transport::Websocket,
        Options {
            cookie: Some(pair.to_owned()),
            origin: Some(origin.clone()),
            ..Default::default()
        },
    )
    .await;
    socket.outcome().await.expect("the minted cookie connects");
    assert_eq!(socket.whoami().await["userId"], "1");
    socket.disconnect().await;

    // JSON works too; an unknown user is refused; so is a foreign origin.
    let json = http()
        .post(format!("{url}/dev/login"))
        .json(&serde_json::json!({ "user": "1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::SEE_OTHER);
    let unknown = http()
        .post(format!("{url}/dev/login"))
        .form(&[("user", "no-such-user")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(unknown.headers().get(SET_COOKIE).is_none());
    let foreign = http()
        .post(format!("{url}/dev/login"))
        .header("Origin", "http://evil.test")
        .form(&[("user", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(foreign.headers().get(SET_COOKIE).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_has_no_dev_login_and_serves_no_files_by_default() {
    let Some(env) = TestEnv::start(Backend::PG).await else {
        return;
    };
    let url = env.url();
    let login = http()
        .post(format!("{url}/dev/login"))
        .form(&[("user", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::NOT_FOUND);
    assert!(login.headers().get(SET_COOKIE).is_none());
    let index = http().get(format!("{url}/app.html")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serves_web_dir_when_set_but_still_no_dev_login() {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
    let Some(env) = TestEnv::start_with(Backend::PG, |c| c.web_dir = Some(web.into())).await else {
        return;
    };
    let url = env.url();
    let page = http().get(format!("{url}/app.html")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let login = http()
        .post(format!("{url}/dev/login"))
        .form(&[("user", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::NOT_FOUND);
}
