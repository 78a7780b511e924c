//! CONNECT authentication with a users file of argon2id hashes.

use hermes_tests::*;
use sdk::mqtt::{Connect, Packet, Version};

async fn code(edge: &TestEdge, v: Version, user: Option<&str>, pass: Option<&str>) -> u8 {
    let mut c = edge.raw(v).await;
    let connect = Connect {
        username: user.map(Into::into),
        password: pass.map(|p| p.as_bytes().to_vec()),
        ..connect("auth", true)
    };
    match c.handshake(connect, WAIT).await {
        Ok(Packet::ConnAck { code, .. }) => code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_file_decides_who_connects() {
    let dir = std::env::temp_dir().join(format!("hermes-auth-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let users = dir.join("users");
    let hash = mqtt_edge::auth::hash_password("open sesame").expect("hash");
    std::fs::write(&users, format!("alice:{hash}\n")).expect("write");
    let edge = TestEdge::start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.users_file = users.display().to_string();
    })
    .await;
    assert_eq!(code(&edge, Version::V311, Some("alice"), Some("open sesame")).await, 0);
    assert_eq!(code(&edge, Version::V311, Some("alice"), Some("wrong")).await, 4);
    assert_eq!(code(&edge, Version::V311, None, None).await, 5);
    assert_eq!(code(&edge, Version::V5, Some("alice"), Some("open sesame")).await, 0);
    assert_eq!(code(&edge, Version::V5, Some("mallory"), Some("open sesame")).await, 0x86);
    assert_eq!(code(&edge, Version::V5, None, None).await, 0x87);
    edge.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
