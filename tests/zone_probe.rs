//! The time-zone probe speaks TLS exactly when the URL asks the pool to:
//! it never sends credentials in plain text where sqlx would not.

#[macro_use]
mod common;

use common::PgServer;
use sockgate::db::{ProbeError, default_zone};

fn with_sslmode(url: &str, mode: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "sslmode")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("sslmode", mode);
    url.to_string()
}

on_both_majors!(the_probe_uses_the_urls_tls_mode, probe_follows_tls_mode);

async fn probe_follows_tls_mode(server: PgServer) {
    let Some(admin) = common::pg::admin_url_of(server) else {
        return;
    };
    if common::pg::started_by_tests(&admin) {
        // A throwaway server (a container, whose image has ssl=off as the
        // official one does) is given a certificate, so the TLS cases run.
        common::pg::enable_tls(&admin).await;
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let (ssl,): (String,) = sqlx::query_as("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let plain = default_zone(&with_sslmode(&admin, "disable"))
        .await
        .unwrap();
    assert!(!plain.encrypted, "sslmode=disable is plain text");
    assert!(!plain.zone.is_empty());

    if ssl == "on" {
        for mode in ["prefer", "require", "allow"] {
            let probe = default_zone(&with_sslmode(&admin, mode)).await.unwrap();
            assert!(
                probe.encrypted,
                "sslmode={mode} on a TLS server is encrypted"
            );
            assert_eq!(probe.zone, plain.zone);
        }
        // A certificate no root vouches for (Debian's snakeoil, a test
        // server's own) is refused where the URL asks for verification.
        let verify = default_zone(&with_sslmode(&admin, "verify-full")).await;
        assert!(matches!(verify, Err(ProbeError::Connect(_))), "{verify:?}");
    } else {
        common::pg::loud("this PostgreSQL has ssl=off: the probe's TLS cases ran as refusals");
        let probe = default_zone(&with_sslmode(&admin, "prefer")).await.unwrap();
        assert!(
            !probe.encrypted,
            "prefer falls back to plain text, as sqlx does"
        );
        let require = default_zone(&with_sslmode(&admin, "require")).await;
        assert!(
            require.is_err(),
            "require never falls back to plain text: {require:?}"
        );
    }
}

/// Two major versions really are two: a run that points both at one server
/// (or at one version twice) would prove nothing about the other.
#[tokio::test]
async fn the_two_servers_are_different_major_versions() {
    let (Some(primary), Some(second)) = (
        common::pg::admin_url_of(PgServer::Primary),
        common::pg::admin_url_of(PgServer::Second),
    ) else {
        return;
    };
    let major = async |url: &str| -> i64 {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let (n,): (String,) = sqlx::query_as("SHOW server_version_num")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n.parse::<i64>().unwrap() / 10_000
    };
    let (a, b) = (major(&primary).await, major(&second).await);
    assert_ne!(
        a, b,
        "the primary and the second PostgreSQL are both version {a}"
    );
}
