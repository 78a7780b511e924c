use std::{cell::RefCell, marker::PhantomData, num, rc::Rc};

use ntex_bytes::ByteString;
use ntex_error::{Failure, IntoFailure};
use ntex_service::pipeline::PipelineState;
use ntex_service::{Ctx, Service, ServiceFactory, cfg::Cfg};
use ntex_util::services::buffer::{BufferService, BufferServiceError};
use ntex_util::{HashMap, HashSet, future::join, hash_map, services::inflight::InFlightService};

use crate::error::{DecodeError, DispatcherError, MqttProtocolError, PayloadError, SpecViolation};
use crate::payload::{Payload, PayloadStatus};
use crate::{MqttServiceConfig, types::QoS};

use super::codec::{self, Decoded, DisconnectReasonCode, Encoded, Packet};
use super::control::{Pkt, ProtocolMessage, ProtocolMessageAck};
use super::publish::{Publish, PublishAck};
use super::{Session, ToPublishAck, shared::Ack, shared::MqttShared};

/// MQTT 5 protocol dispatcher
pub(super) fn factory<AppSt, E, Pub, Ctl>(
    publish: Pub,
    control: Ctl,
) -> impl ServiceFactory<
    Session<AppSt>,
    Decoded,
    Res = Option<Encoded>,
    Error = DispatcherError<E>,
    InitError = Failure,
>
where
    AppSt: 'static,
    E: From<Ctl::Error> + 'static,
    Pub: ServiceFactory<Session<AppSt>, Publish, Res = PublishAck> + 'static,
    Pub::Error: ToPublishAck<Error = E>,
    Pub::InitError: IntoFailure,
    Ctl: ServiceFactory<Session<AppSt>, ProtocolMessage, Res = ProtocolMessageAck> + 'static,
    Ctl::InitError: IntoFailure,
{
    ntex_service::factory(async move |con: &Session<AppSt>| {
        let cfg: Cfg<MqttServiceConfig> = con.cfg();

        // create services
        let sink = con.sink().shared();
        let (publish, control) = join(publish.create(con), control.create(con)).await;

        let publish = publish.map_err(IntoFailure::fail)?;
        let control = control.map_err(IntoFailure::fail)?;

        let control = BufferService::new(
            16,
            // limit number of in-flight messages
            PipelineState::new(InFlightService::new(1, control)),
        )
        .map_err(|err| match err {
            BufferServiceError::Service(e) => DispatcherError::Service(E::from(e)),
            BufferServiceError::RequestCanceled => {
                DispatcherError::Protocol(MqttProtocolError::ReadTimeout)
            }
        });

        Ok(Dispatcher::new(sink, publish, control, cfg))
    })
}

impl crate::inflight::SizedRequest for Decoded {
    fn size(&self) -> u32 {
        if let Decoded::Packet(_, size) | Decoded::Publish(_, _, size) = self {
            *size
        } else {
            0
        }
    }

    fn is_publish(&self) -> bool {
        matches!(self, Decoded::Publish(..))
    }

    fn is_chunk(&self) -> bool {
        matches!(self, Decoded::PayloadChunk(..))
    }
}

/// Mqtt protocol dispatcher
pub(crate) struct Dispatcher<St, T, C, E> {
    publish: T,
    inner: Inner<C>,
    cfg: Cfg<MqttServiceConfig>,
    e: PhantomData<(St, E)>,
}

struct Inner<C> {
    control: C,
    sink: Rc<MqttShared>,
    info: RefCell<PublishInfo>,
}

struct PublishInfo {
    inflight: HashSet<num::NonZeroU16>,
    aliases: HashMap<num::NonZeroU16, ByteString>,
}

impl<St, T, C, E> Dispatcher<St, T, C, E>
where
    T: Service<St, Publish, Res = PublishAck>,
    T::Error: ToPublishAck<Error = E>,
    C: Service<St, ProtocolMessage, Res = ProtocolMessageAck, Error = DispatcherError<E>>,
{
    fn new(sink: Rc<MqttShared>, publish: T, control: C, cfg: Cfg<MqttServiceConfig>) -> Self {
        Self {
            cfg,
            publish,
            inner: Inner {
                sink,
                control,
                info: RefCell::new(PublishInfo {
                    aliases: HashMap::default(),
                    inflight: HashSet::default(),
                }),
            },
            e: PhantomData,
        }
    }

    fn tag(&self) -> &'static str {
        self.inner.sink.tag()
    }
}

impl<St, T, C, E> Service<St, Decoded> for Dispatcher<St, T, C, E>
where
    E: 'static,
    T: Service<St, Publish, Res = PublishAck> + 'static,
    T::Error: ToPublishAck<Error = E>,
    C: Service<St, ProtocolMessage, Res = ProtocolMessageAck, Error = DispatcherError<E>>,
{
    type Res = Option<Encoded>;
    type Error = DispatcherError<E>;

    async fn ready(&self, ctx: Ctx<'_, Self, St>) -> Result<(), Self::Error> {
        let (res1, res2) = join(ctx.ready(&self.publish), ctx.ready(&self.inner.control)).await;
        if (res1.is_err() || res2.is_err())
            && let Some(pl) = self.inner.sink.payload.take()
        {
            self.inner.sink.payload.set(Some(pl.clone()));
            if pl.ready().await != PayloadStatus::Ready {
                self.inner.sink.force_close();
            }
        }

        res1.map_err(|e| DispatcherError::Service(e.into_error()))?;
        res2?;
        Ok(())
    }

    async fn shutdown(&self, ctx: Ctx<'_, Self, St>) {
        log::trace!("{}: Shutdown v5 dispatcher", self.tag());
        self.inner.sink.drop_payload(&PayloadError::Disconnected);
        self.inner.sink.drop_sink(true);

        ctx.shutdown(&self.publish).await;
        ctx.shutdown(&self.inner.control).await;
    }

    #[allow(clippy::too_many_lines, clippy::await_holding_refcell_ref)]
    async fn call(&self, req: Decoded, ctx: Ctx<'_, Self, St>) -> Result<Self::Res, Self::Error> {
        log::trace!("{}: Dispatch v5 packet: {:#?}", self.tag(), req);

        match req {
            Decoded::Publish(mut publish, payload, size) => {
                let info = &self.inner;
                let packet_id = publish.packet_id;

                if publish.topic.contains(['#', '+']) {
                    return Err(SpecViolation::Pub_3_3_2_2.into());
                }

                {
                    let mut inner = info.info.borrow_mut();
                    let state = &self.inner.sink;

                    if let Some(pid) = packet_id {
                        // check for receive maximum
                        let receive_max = state.receive_max();
                        if receive_max != 0 && inner.inflight.len() >= receive_max as usize {
                            log::trace!(
                                "{}: Receive maximum exceeded: max: {} in-flight: {}",
                                self.tag(),
                                receive_max,
                                inner.inflight.len()
                            );
                            return Err(SpecViolation::Pub_3_3_4_7.into());
                        }

                        // check max allowed qos
                        if publish.qos > state.max_qos() {
                            log::trace!(
                                "{}: Max allowed QoS is violated, max {:?} provided {:?}",
                                self.tag(),
                                state.max_qos(),
                                publish.qos
                            );
                            return Err(SpecViolation::Connack_3_2_2_11.into());
                        }
                        if publish.retain && !state.codec.retain_available() {
                            log::trace!("{}: Retain is not available but is set", self.tag());
                            return Err(SpecViolation::Connack_3_2_2_14.into());
                        }

                        // check for duplicated packet id
                        if !inner.inflight.insert(pid) {
                            let _ = self.inner.sink.encode_packet(codec::Packet::PublishAck(
                                codec::PublishAck {
                                    packet_id: pid,
                                    reason_code: codec::PublishAckReason::PacketIdentifierInUse,
                                    ..Default::default()
                                },
                            ));
                            return Ok(None);
                        }
                    }

                    // handle topic aliases
                    if let Some(alias) = publish.properties.topic_alias {
                        if publish.topic.is_empty() {
                            // lookup topic by provided alias
                            if let Some(aliased_topic) = inner.aliases.get(&alias) {
                                publish.topic = aliased_topic.clone();
                            } else {
                                return Err(MqttProtocolError::violation(
                                    DisconnectReasonCode::TopicAliasInvalid,
                                    "Unknown topic alias",
                                )
                                .into());
                            }
                        } else {
                            // record new alias
                            match inner.aliases.entry(alias) {
                                hash_map::Entry::Occupied(mut entry) => {
                                    if entry.get().as_str() != publish.topic.as_str() {
                                        let mut topic = publish.topic.clone();
                                        topic.trimdown();
                                        entry.insert(topic);
                                    }
                                }
                                hash_map::Entry::Vacant(entry) => {
                                    if alias.get() > state.topic_alias_max() {
                                        return Err(SpecViolation::Connack_3_2_2_17.into());
                                    }
                                    let mut topic = publish.topic.clone();
                                    topic.trimdown();
                                    entry.insert(topic);
                                }
                            }
                        }
                    }

                    if state.is_closed()
                        && self
                            .cfg
                            .handle_qos_after_disconnect
                            .is_none_or(|max_qos| publish.qos > max_qos)
                    {
                        return Ok(None);
                    }
                }

                let payload = if publish.payload_size == payload.len() as u32 {
                    Payload::from_bytes(payload)
                } else {
                    let (pl, sender) =
                        Payload::from_stream(payload, self.cfg.max_payload_buffer_size);
                    self.inner.sink.payload.set(Some(sender));
                    pl
                };

                publish_fn(
                    &self.publish,
                    Publish::new(publish, payload, size),
                    packet_id.map_or(0, num::NonZero::get),
                    info,
                    ctx,
                )
                .await
            }
            Decoded::PayloadChunk(buf, eof) => {
                if let Some(pl) = self.inner.sink.payload.take() {
                    pl.feed_data(buf);
                    if eof {
                        pl.feed_eof();
                    } else {
                        self.inner.sink.payload.set(Some(pl));
                    }
                    Ok(None)
                } else {
                    Err(MqttProtocolError::Decode(DecodeError::UnexpectedPayload).into())
                }
            }
            Decoded::Packet(Packet::PublishAck(packet), _) => {
                self.inner.sink.pkt_ack(Ack::Publish(packet))?;
                Ok(None)
            }
            Decoded::Packet(Packet::PublishReceived(pkt), _) => {
                self.inner.sink.pkt_ack(Ack::Receive(pkt))?;
                Ok(None)
            }
            Decoded::Packet(Packet::PublishRelease(ack), size) => {
                if self.inner.info.borrow().inflight.contains(&ack.packet_id) {
                    // Hermes: the QoS 2 exchange ends with this PUBREL's PUBCOMP, and its packet
                    // id is free again (9.0.0 passed 0 here and never let the id go: the
                    // client's next use of it got 0x91, and its receive maximum filled up).
                    let id = ack.packet_id.get();
                    self.inner
                        .control_pkt(ProtocolMessage::pubrel(ack, size), id, ctx)
                        .await
                } else {
                    Ok(Some(Encoded::Packet(codec::Packet::PublishComplete(
                        codec::PublishAck2 {
                            packet_id: ack.packet_id,
                            reason_code: codec::PublishAck2Reason::PacketIdNotFound,
                            properties: codec::UserProperties::default(),
                            reason_string: None,
                        },
                    ))))
                }
            }
            Decoded::Packet(Packet::PublishComplete(pkt), _) => {
                self.inner.sink.pkt_ack(Ack::Complete(pkt))?;
                Ok(None)
            }
            Decoded::Packet(Packet::Auth(pkt), size) => {
                if self.inner.sink.is_closed() {
                    Ok(None)
                } else {
                    self.inner
                        .control(ProtocolMessage::auth(pkt, size), ctx)
                        .await
                }
            }
            Decoded::Packet(Packet::PingRequest, _) => {
                self.inner.control(ProtocolMessage::ping(), ctx).await
            }
            Decoded::Packet(Packet::Disconnect(pkt), size) => {
                self.inner.sink.set_disconnect_recv();

                // Check session expiry
                if let Some(val) = pkt.session_expiry_interval_secs
                    && val > 0
                    && self.inner.sink.is_zero_session_expiry()
                {
                    Err(SpecViolation::Disconnect_3_14_2_22.into())
                } else {
                    self.inner.sink.is_disconnect_sent();
                    self.inner.sink.close(None);
                    self.inner
                        .control(ProtocolMessage::remote_disconnect(pkt, size), ctx)
                        .await
                }
            }
            Decoded::Packet(Packet::Subscribe(pkt), size) => {
                if self.inner.sink.is_closed() {
                    Ok(None)
                } else if pkt
                    .topic_filters
                    .iter()
                    .any(|(tf, _)| !crate::topic::is_valid(tf))
                {
                    Err(SpecViolation::Subs_4_7_1.into())
                } else if pkt.id.is_some() && !self.inner.sink.codec.sub_ids_available() {
                    log::trace!(
                        "{}: Subscription Identifiers are not supported but was set",
                        self.tag()
                    );
                    Err(SpecViolation::Connack_3_2_2_3_12.into())
                } else if !self.inner.info.borrow_mut().inflight.insert(pkt.packet_id) {
                    // duplicated packet id
                    let _ = self.inner.sink.encode_packet(codec::Packet::SubscribeAck(
                        codec::SubscribeAck {
                            packet_id: pkt.packet_id,
                            status: pkt
                                .topic_filters
                                .iter()
                                .map(|_| codec::SubscribeAckReason::PacketIdentifierInUse)
                                .collect(),
                            properties: codec::UserProperties::new(),
                            reason_string: None,
                        },
                    ));
                    Ok(None)
                } else {
                    let id = pkt.packet_id;
                    self.inner
                        .control_pkt(ProtocolMessage::subscribe(pkt, size), id.get(), ctx)
                        .await
                }
            }
            Decoded::Packet(Packet::Unsubscribe(pkt), size) => {
                if self.inner.sink.is_closed() {
                    Ok(None)
                } else if pkt
                    .topic_filters
                    .iter()
                    .any(|tf| !crate::topic::is_valid(tf))
                {
                    Err(SpecViolation::Subs_4_7_1.into())
                } else if !self.inner.info.borrow_mut().inflight.insert(pkt.packet_id) {
                    // duplicated packet id
                    let _ = self.inner.sink.encode_packet(codec::Packet::UnsubscribeAck(
                        codec::UnsubscribeAck {
                            packet_id: pkt.packet_id,
                            status: pkt
                                .topic_filters
                                .iter()
                                .map(|_| codec::UnsubscribeAckReason::PacketIdentifierInUse)
                                .collect(),
                            properties: codec::UserProperties::new(),
                            reason_string: None,
                        },
                    ));
                    Ok(None)
                } else {
                    let id = pkt.packet_id;
                    self.inner
                        .control_pkt(ProtocolMessage::unsubscribe(pkt, size), id.get(), ctx)
                        .await
                }
            }
            Decoded::Packet(_, _) => Ok(None),
        }
    }
}

impl<C> Inner<C> {
    async fn control<St, T, E>(
        &self,
        pkt: ProtocolMessage,
        ctx: Ctx<'_, Dispatcher<St, T, C, E>, St>,
    ) -> Result<Option<Encoded>, DispatcherError<E>>
    where
        C: Service<St, ProtocolMessage, Res = ProtocolMessageAck, Error = DispatcherError<E>>,
    {
        self.control_pkt(pkt, 0, ctx).await
    }

    async fn control_pkt<St, T, E>(
        &self,
        pkt: ProtocolMessage,
        packet_id: u16,
        ctx: Ctx<'_, Dispatcher<St, T, C, E>, St>,
    ) -> Result<Option<Encoded>, DispatcherError<E>>
    where
        C: Service<St, ProtocolMessage, Res = ProtocolMessageAck, Error = DispatcherError<E>>,
    {
        let result = match ctx.call(&self.control, pkt).await {
            Ok(result) => {
                if let Some(id) = num::NonZeroU16::new(packet_id) {
                    self.info.borrow_mut().inflight.remove(&id);
                }
                result
            }
            Err(err) => {
                self.sink.drop_sink(false);
                self.sink.drop_payload(&PayloadError::Service);
                return Err(err);
            }
        };

        let response = match result.packet {
            Pkt::Packet(pkt) => Ok(Some(Encoded::Packet(pkt))),
            Pkt::Disconnect(pkt) => {
                if self.sink.is_disconnect_sent() {
                    Ok(None)
                } else {
                    Ok(Some(Encoded::Packet(codec::Packet::from(pkt))))
                }
            }
            Pkt::None => Ok(None),
        };

        if result.disconnect {
            self.sink.drop_sink(true);
            self.sink.drop_payload(&PayloadError::Service);
        }
        response
    }
}

/// Publish service response future
async fn publish_fn<'f, St, T, C, E>(
    publish: &T,
    pkt: Publish,
    packet_id: u16,
    inner: &'f Inner<C>,
    ctx: Ctx<'f, Dispatcher<St, T, C, E>, St>,
) -> Result<Option<Encoded>, DispatcherError<E>>
where
    T: Service<St, Publish, Res = PublishAck>,
    T::Error: ToPublishAck<Error = E>,
    C: Service<St, ProtocolMessage, Res = ProtocolMessageAck, Error = DispatcherError<E>>,
{
    let qos2 = pkt.qos() == QoS::ExactlyOnce;
    let ack = match ctx.call(publish, pkt).await {
        Ok(ack) => ack,
        Err(e) => {
            if packet_id != 0 {
                match e.try_ack() {
                    Ok(ack) => ack,
                    Err(e) => {
                        return Err(DispatcherError::Service(e));
                    }
                }
            } else {
                return Err(DispatcherError::Service(e.into_error()));
            }
        }
    };

    if let Some(id) = num::NonZeroU16::new(packet_id) {
        let ack = if qos2 {
            codec::Packet::PublishReceived(codec::PublishAck {
                packet_id: id,
                reason_code: ack.reason_code,
                reason_string: ack.reason_string,
                properties: ack.properties,
            })
        } else {
            inner.info.borrow_mut().inflight.remove(&id);
            codec::Packet::PublishAck(codec::PublishAck {
                packet_id: id,
                reason_code: ack.reason_code,
                reason_string: ack.reason_string,
                properties: ack.properties,
            })
        };
        Ok(Some(Encoded::Packet(ack)))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU16, NonZeroU32};

    use ntex_bytes::{ByteString, Bytes};
    use ntex_io::{Io, testing::IoTest};
    use ntex_service::{Pipeline, cfg::SharedCfg, fn_service};

    use super::*;
    use crate::{error, v5::MqttSink, v5::codec};

    #[derive(Debug)]
    struct TestError;

    impl From<()> for TestError {
        fn from((): ()) -> Self {
            TestError
        }
    }

    impl TryFrom<TestError> for PublishAck {
        type Error = TestError;

        fn try_from(err: TestError) -> Result<Self, Self::Error> {
            Err(err)
        }
    }

    #[ntex::test]
    async fn test_spec_violations() {
        let cfg: SharedCfg = SharedCfg::new("DBG")
            .add(MqttServiceConfig::new().set_max_qos(QoS::AtLeastOnce))
            .into();

        let io = Io::new(IoTest::create().0, cfg.clone());
        let codec = codec::Codec::default();
        codec.set_retain_available(false);
        codec.set_sub_ids_available(false);
        let shared = Rc::new(MqttShared::new(io.get_ref(), codec, Rc::default()));
        shared.set_topic_alias_max(1);

        let disp = Pipeline::new(
            Session::new((), MqttSink::new(shared.clone()), SharedCfg::default()),
            Dispatcher::new(
                shared.clone(),
                fn_service(async |msg: Publish| Ok::<_, TestError>(msg.ack())),
                fn_service(async |msg: ProtocolMessage| {
                    Ok::<_, DispatcherError<TestError>>(msg.ack())
                }),
                cfg.get(),
            ),
        );

        // retain not available
        let err = disp
            .call(Decoded::Publish(
                codec::Publish {
                    retain: true,
                    qos: QoS::AtLeastOnce,
                    packet_id: NonZeroU16::new(1),
                    ..Default::default()
                },
                Bytes::new(),
                999,
            ))
            .await
            .err()
            .unwrap();

        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Spec(error::SpecViolation::Connack_3_2_2_14)
        );

        // topic aliases
        let mut pkt = codec::Publish::default();
        pkt.properties.topic_alias = NonZeroU16::new(1);

        let err = disp
            .call(Decoded::Publish(pkt, Bytes::new(), 999))
            .await
            .err()
            .unwrap();
        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Common {
                reason: DisconnectReasonCode::TopicAliasInvalid,
                message: "Unknown topic alias"
            }
        );

        // add topic aliase
        let mut pkt = codec::Publish {
            packet_id: NonZeroU16::new(1),
            topic: ByteString::from_static("test"),
            ..Default::default()
        };
        pkt.properties.topic_alias = NonZeroU16::new(1);
        let res = disp.call(Decoded::Publish(pkt, Bytes::new(), 999)).await;
        assert!(res.is_ok());

        // new topic alias
        let mut pkt = codec::Publish {
            packet_id: NonZeroU16::new(2),
            topic: ByteString::from_static("test2"),
            ..Default::default()
        };
        pkt.properties.topic_alias = NonZeroU16::new(2);

        let err = disp
            .call(Decoded::Publish(pkt, Bytes::new(), 999))
            .await
            .err()
            .unwrap();
        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Spec(error::SpecViolation::Connack_3_2_2_17)
        );

        // unknown PublishRelease
        let pkt = disp
            .call(Decoded::Packet(
                Packet::PublishRelease(codec::PublishAck2 {
                    packet_id: NonZeroU16::new(100).unwrap(),
                    reason_code: codec::PublishAck2Reason::Success,
                    properties: codec::UserProperties::default(),
                    reason_string: None,
                }),
                999,
            ))
            .await
            .ok()
            .unwrap()
            .unwrap();

        let Encoded::Packet(Packet::PublishComplete(pkt)) = pkt else {
            panic!()
        };
        assert_eq!(pkt.reason_code, codec::PublishAck2Reason::PacketIdNotFound);

        // subscribe invalid topic
        let err = disp
            .call(Decoded::Packet(
                Packet::Subscribe(codec::Subscribe {
                    packet_id: NonZeroU16::new(1).unwrap(),
                    id: None,
                    user_properties: codec::UserProperties::default(),
                    topic_filters: vec![(ByteString::new(), codec::SubscriptionOptions::default())],
                }),
                999,
            ))
            .await
            .err()
            .unwrap();

        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Spec(error::SpecViolation::Subs_4_7_1)
        );

        // subscribe sub id not available
        let err = disp
            .call(Decoded::Packet(
                Packet::Subscribe(codec::Subscribe {
                    packet_id: NonZeroU16::new(1).unwrap(),
                    id: NonZeroU32::new(1),
                    user_properties: codec::UserProperties::default(),
                    topic_filters: vec![(
                        ByteString::from_static("test"),
                        codec::SubscriptionOptions::default(),
                    )],
                }),
                999,
            ))
            .await
            .err()
            .unwrap();

        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Spec(error::SpecViolation::Connack_3_2_2_3_12)
        );

        // unsubscribe invalid topic
        let err = disp
            .call(Decoded::Packet(
                Packet::Unsubscribe(codec::Unsubscribe {
                    packet_id: NonZeroU16::new(1).unwrap(),
                    user_properties: codec::UserProperties::default(),
                    topic_filters: vec![ByteString::new()],
                }),
                999,
            ))
            .await
            .err()
            .unwrap();

        let DispatcherError::Protocol(MqttProtocolError::ProtocolViolation(err)) = err else {
            panic!()
        };
        assert_eq!(
            err.inner,
            error::ViolationInner::Spec(error::SpecViolation::Subs_4_7_1)
        );
    }
}
