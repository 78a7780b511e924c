//! The real backends against the same contracts their embedded counterparts meet.

use hermes_tests::servers;

#[tokio::test]
async fn nats_bus_meets_the_contract() {
    let server = servers::nats();
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    bus::contract::check(&bus).await;
}
