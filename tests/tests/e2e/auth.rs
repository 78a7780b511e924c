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
    let hash = service_kit::password::hash("open sesame").expect("hash");
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

mod tokens {
    use std::time::Duration;

    use hermes_tests::*;
    use sdk::mqtt::{Connect, Packet, SubscribeTopic, Version};
    use wire::token::Signer;

    fn with_token(id: &str, user: Option<&str>, token: Vec<u8>) -> Connect {
        Connect { username: user.map(Into::into), password: Some(token), ..connect(id, true) }
    }

    async fn code(edge: &TestEdge, v: Version, c: Connect) -> (u8, Option<String>) {
        let mut client = edge.raw(v).await;
        match client.handshake(c, WAIT).await {
            Ok(Packet::ConnAck { code, properties, .. }) => (code, properties.reason_string),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn token_connects_are_verified_with_the_public_key_only() {
        let signer = Signer::generate().expect("keys");
        let forger = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let edge = TestEdge::start_with(|c| {
            c.auth.allow_anonymous = false;
            c.auth.token_public_key = public;
        })
        .await;
        let good = || access_token(&signer, "alice", Duration::from_secs(60));
        for v in [Version::V311, Version::V5] {
            assert_eq!(code(&edge, v, with_token("a", None, good())).await.0, 0, "{v:?} token alone");
            assert_eq!(code(&edge, v, with_token("a", Some("alice"), good())).await.0, 0, "{v:?} with its username");
        }
        let expired = access_token(&signer, "alice", Duration::from_secs(0));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let forged = access_token(&forger, "alice", Duration::from_secs(60));
        let mut tampered = good();
        let i = tampered.len() - 10;
        tampered[i] ^= 1;
        let cases = [
            ("expired", with_token("x", None, expired), 5, 0x87, "expired"),
            ("forged", with_token("x", None, forged), 4, 0x86, "not valid"),
            ("tampered", with_token("x", None, tampered), 4, 0x86, "not valid"),
            ("someone else's", with_token("x", Some("mallory"), good()), 4, 0x86, "another user"),
            ("jwt alg none", with_token("x", None, b"v4.public.eyJhbGciOiJub25lIn0".to_vec()), 4, 0x86, "not valid"),
        ];
        for (what, c, v3_code, v5_code, reason) in cases {
            assert_eq!(code(&edge, Version::V311, c.clone()).await.0, v3_code, "v3 {what}");
            let (got, why) = code(&edge, Version::V5, c).await;
            assert_eq!(got, v5_code, "v5 {what}");
            assert!(why.as_deref().is_some_and(|w| w.contains(reason)), "v5 {what} reason: {why:?}");
        }
        edge.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn enterprise_acl_and_auto_subscribe_apply_to_token_users() {
        let signer = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let edge = TestEdge::start_with(|c| {
            c.auth.allow_anonymous = false;
            c.auth.token_public_key = public;
        })
        .await;
        let alice_token = access_token(&signer, "alice", Duration::from_secs(60));
        let (mut alice, _) = edge.connect(Version::V5, with_token("alice-phone", None, alice_token)).await;
        let (mut bob, _) = edge
            .connect(Version::V311, with_token("bob-pc", None, access_token(&signer, "bob", Duration::from_secs(60))))
            .await;
        // Auto-subscribed to her inbox at CONNECT: bob writes to it, alice gets it unasked.
        bob.publish("acme/im/msg/alice", b"hi alice", 1, false, WAIT).await.expect("puback");
        let got = expect_publish(&mut alice).await;
        assert_eq!((got.topic.as_str(), &got.payload[..]), ("acme/im/msg/alice", &b"hi alice"[..]));
        ack(&mut alice, &got).await;
        // Reading someone else's inbox, or everything, is refused per filter.
        let codes = alice
            .subscribe(
                vec![
                    SubscribeTopic::new("acme/im/msg/bob", 1),
                    SubscribeTopic::new("acme/#", 0),
                    SubscribeTopic::new("$share/g/acme/im/msg/bob", 0),
                    SubscribeTopic::new("acme/notice/hr", 1),
                ],
                WAIT,
            )
            .await
            .expect("suback");
        assert_eq!(codes, vec![0x87, 0x87, 0x87, 1]);
        let codes = bob.subscribe(vec![SubscribeTopic::new("acme/im/msg/alice", 1)], WAIT).await.expect("suback");
        assert_eq!(codes, vec![0x80], "v3 refusal code");
        // Writing another user's presence is refused: v5 with PUBACK 0x87, v3 silently dropped.
        assert_eq!(alice.publish("acme/im/pres/bob", b"fake", 1, false, WAIT).await.expect("puback"), Some(0x87));
        // v3 has no negative PUBACK: bob's forged presence is acknowledged but never routed.
        let codes = alice.subscribe(vec![SubscribeTopic::new("acme/im/pres/alice", 0)], WAIT).await.expect("suback");
        assert_eq!(codes, vec![0]);
        assert_eq!(&expect_publish(&mut alice).await.payload[..], b"online", "her retained presence");
        bob.publish("acme/im/pres/alice", b"fake", 1, false, WAIT).await.expect("v3 still gets its PUBACK");
        expect_nothing(&mut alice).await;
        alice.publish("acme/im/pres/alice", b"online", 0, true, WAIT).await.expect("own presence");
        assert_eq!(&expect_publish(&mut alice).await.payload[..], b"online");
        expect_nothing(&mut bob).await;
        edge.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn presence_follows_the_last_device() {
        let signer = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let edge = TestEdge::start_with(|c| c.auth.token_public_key = public).await;
        let mut watcher = edge.client(Version::V311, "watcher").await;
        watcher.subscribe(vec![SubscribeTopic::new("acme/im/pres/alice", 1)], WAIT).await.expect("suback");
        let alice = || access_token(&signer, "alice", Duration::from_secs(60));
        let mut status = async || {
            let p = expect_publish(&mut watcher).await;
            ack(&mut watcher, &p).await;
            String::from_utf8(p.payload.to_vec()).expect("utf8")
        };
        let (phone, _) = edge.connect(Version::V5, with_token("alice-phone", None, alice())).await;
        assert_eq!(status().await, "online");
        let (pc, _) = edge.connect(Version::V311, with_token("alice-pc", None, alice())).await;
        drop(phone);
        // Same client id again: a takeover, not a device leaving.
        let (pc_again, _) = edge.connect(Version::V311, with_token("alice-pc", None, alice())).await;
        drop(pc);
        tokio::time::sleep(QUIET).await;
        drop(pc_again);
        assert_eq!(status().await, "offline", "only the last device leaving counts");
        expect_nothing(&mut watcher).await;
        let mut late = edge.client(Version::V5, "late").await;
        late.subscribe(vec![SubscribeTopic::new("acme/im/pres/alice", 0)], WAIT).await.expect("suback");
        let kept = expect_publish(&mut late).await;
        assert_eq!((&kept.payload[..], kept.retain), (&b"offline"[..], true));
        edge.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn presence_waits_out_one_shot_connections_and_reconnects() {
        let signer = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let edge = TestEdge::start_with(|c| {
            c.auth.token_public_key = public;
            c.limits.presence_grace_secs = 1;
        })
        .await;
        let mut watcher = edge.client(Version::V311, "watcher").await;
        watcher.subscribe(vec![SubscribeTopic::new("acme/im/pres/bob", 1)], WAIT).await.expect("suback");
        let bob = || with_token("bob-phone", None, access_token(&signer, "bob", Duration::from_secs(60)));
        // `hermes send`: connect, publish, leave. Nobody hears of it.
        let (mut once, _) = edge.connect(Version::V5, bob()).await;
        once.publish("acme/im/msg/alice", b"hi", 1, false, WAIT).await.expect("puback");
        drop(once);
        match watcher.recv(Duration::from_millis(2500)).await {
            Err(sdk::mqtt::RecvError::Timeout) => {}
            other => panic!("a one-shot connection announced presence: {other:?}"),
        }
        // A device that stays is online after the grace; a quick reconnect shows no offline.
        let (stays, _) = edge.connect(Version::V5, bob()).await;
        let p = expect_publish(&mut watcher).await;
        assert_eq!(&p.payload[..], b"online");
        ack(&mut watcher, &p).await;
        drop(stays);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (back, _) = edge.connect(Version::V5, bob()).await;
        match watcher.recv(Duration::from_millis(2500)).await {
            Err(sdk::mqtt::RecvError::Timeout) => {}
            other => panic!("a reconnect within the grace flickered: {other:?}"),
        }
        drop(back);
        let p = expect_publish(&mut watcher).await;
        assert_eq!(&p.payload[..], b"offline", "gone for good");
        edge.stop().await;
    }
}
