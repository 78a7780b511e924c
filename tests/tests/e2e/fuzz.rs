//! Arbitrary byte streams against a real edge: valid packets of both versions, mutated (bytes
//! flipped, cut short, lengths inflated, packets spliced) and pure noise, each on a connection
//! of its own. Nothing a client sends may panic a connection handler or stop the edge from
//! serving others. CI runs a few hundred streams; `scripts/fuzz-edge.sh` runs as many as asked
//! (`HERMES_FUZZ_STREAMS`, `HERMES_FUZZ_SEED`).

use std::time::Duration;

use bytes::BytesMut;
use hermes_tests::*;
use sdk::mqtt::codec::encode;
use sdk::mqtt::{Connect, Packet, Publish, SubscribeTopic, Version, Will};

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Well-formed packets a session might send, for `v`.
fn corpus(v: Version) -> Vec<Vec<u8>> {
    let connect = Connect {
        client_id: "fuzz".into(),
        clean_start: true,
        keep_alive: 5,
        username: Some("u".into()),
        password: Some(b"p".to_vec()),
        will: Some(Will {
            topic: "w/t".into(),
            payload: b"bye".to_vec(),
            qos: 1,
            retain: true,
            delay_interval: Some(1),
        }),
        session_expiry: Some(10),
        receive_maximum: Some(5),
        max_packet_size: Some(1024),
        topic_alias_maximum: Some(3),
    };
    let publish = |qos: u8| {
        Packet::Publish(Publish {
            topic: "fuzz/t".into(),
            payload: bytes::Bytes::from_static(b"payload"),
            qos,
            packet_id: (qos > 0).then_some(7),
            ..Publish::default()
        })
    };
    let packets = vec![
        Packet::Connect(connect),
        publish(0),
        publish(1),
        publish(2),
        Packet::Subscribe {
            packet_id: 3,
            topics: vec![SubscribeTopic::new("fuzz/#", 2)],
            subscription_id: None,
            user_properties: vec![],
        },
        Packet::Unsubscribe { packet_id: 4, filters: vec!["fuzz/#".into()] },
        Packet::PubAck { packet_id: 7, code: 0 },
        Packet::PubRec { packet_id: 7, code: 0 },
        Packet::PubRel { packet_id: 7, code: 0 },
        Packet::PubComp { packet_id: 7, code: 0 },
        Packet::PingReq,
        Packet::disconnect(0),
    ];
    packets
        .iter()
        .map(|p| {
            let mut out = BytesMut::new();
            encode(p, v, &mut out);
            out.to_vec()
        })
        .collect()
}

/// One byte stream: a CONNECT (usually), then packets, each possibly mutated.
fn stream(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.below(10) == 0 {
        // Pure noise.
        out.extend((0..rng.below(300)).map(|_| rng.next() as u8));
        return out;
    }
    let count = 1 + rng.below(8);
    for i in 0..count {
        let mut p =
            if i == 0 && rng.below(5) != 0 { corpus[0].clone() } else { corpus[rng.below(corpus.len())].clone() };
        match rng.below(6) {
            0 => {
                // Flip a few bytes.
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(p.len());
                    p[at] ^= rng.next() as u8;
                }
            }
            1 => p.truncate(rng.below(p.len())),
            2 if p.len() > 1 => p[1] = 0xff, // a remaining length that promises more
            3 => p.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
            _ => {}
        }
        out.extend(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_byte_streams_never_panic_the_edge() {
    count_edge_panics();
    let streams: usize = std::env::var("HERMES_FUZZ_STREAMS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("HERMES_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let edge = TestEdge::start_with(|c| c.limits.max_packet_size = 4096).await;
    let mut rng = Rng(seed | 1);
    let corpora = [corpus(Version::V311), corpus(Version::V5)];
    let mut pending = tokio::task::JoinSet::new();
    for n in 0..streams {
        let bytes = stream(&mut rng, &corpora[n % 2]);
        let addr = edge.tcp;
        pending.spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(&bytes).await;
            // Read what comes back until the edge closes or falls quiet.
            let mut buf = [0u8; 4096];
            while let Ok(Ok(read)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                if read == 0 {
                    break;
                }
            }
        });
        // A few dozen connections at a time.
        while pending.len() >= 32 {
            pending.join_next().await;
        }
    }
    while pending.join_next().await.is_some() {}
    assert_eq!(edge_panics(), Vec::<String>::new(), "a connection handler panicked (seed {seed})");
    // The edge still serves well-behaved clients (from an address of their own: the fuzzed one
    // earned itself a slow-down with its bad credentials).
    let client = |v: Version, id: &'static str| {
        let edge = &edge;
        async move {
            let mut c = edge.raw_from([127, 0, 0, 3], v).await;
            match c.handshake(connect(id, true), WAIT).await {
                Ok(Packet::ConnAck { code: 0, .. }) => c,
                other => panic!("{id}: {other:?}"),
            }
        }
    };
    let mut sub = client(Version::V5, "after-fuzz").await;
    sub.subscribe(vec![SubscribeTopic::new("ok/t", 1)], WAIT).await.expect("suback");
    let mut publisher = client(Version::V311, "after-fuzz-pub").await;
    publisher.publish("ok/t", b"alive", 1, false, WAIT).await.expect("puback");
    assert_eq!(&expect_publish(&mut sub).await.payload[..], b"alive");
    edge.stop().await;
}
