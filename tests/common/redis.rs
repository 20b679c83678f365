//! Finding a Redis for the Redis adapter's tests: `SOCKGATE_TEST_REDIS_URL`
//! if set; else a container where a Docker daemon answers (image
//! `SOCKGATE_TEST_REDIS_IMAGE`, default `redis:7`); else a server on
//! 127.0.0.1:6379 if one answers. Without one the tests skip loudly, unless
//! `SOCKGATE_REQUIRE_REDIS=1`: then they fail.

use std::sync::OnceLock;

use super::containers;

pub fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(find).clone()
}

fn find() -> Option<String> {
    if let Ok(url) = std::env::var("SOCKGATE_TEST_REDIS_URL") {
        containers::announce(&format!("Redis for the tests: {url}"));
        return Some(url);
    }
    match containers::redis() {
        Ok(url) => return Some(url),
        Err(why) => containers::announce(&format!(
            "no Redis container ({why}); trying 127.0.0.1:6379"
        )),
    }
    let local = "127.0.0.1:6379";
    if std::net::TcpStream::connect_timeout(
        &local.parse().unwrap(),
        std::time::Duration::from_secs(1),
    )
    .is_ok()
    {
        containers::announce(&format!("Redis for the tests: {local}"));
        return Some(format!("redis://{local}"));
    }
    assert!(
        !std::env::var("SOCKGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1"),
        "SOCKGATE_REQUIRE_REDIS=1 but no Redis was found (set SOCKGATE_TEST_REDIS_URL, start a Docker daemon, or run redis-server on 127.0.0.1:6379)"
    );
    containers::announce(
        "\n!!!!!!!! no Redis for the tests (set SOCKGATE_TEST_REDIS_URL or start a Docker daemon)\n!!!!!!!! the Redis adapter test is SKIPPED in this run\n",
    );
    None
}
