//! A raw MQTT client over one tokio `TcpStream`: it sends exactly what it is told (including
//! malformed bytes) and hands back every packet it receives, with a few test conveniences.
//!
//! Nothing runs in the background, so an idle client costs one socket, a 256-byte read buffer
//! and a few words: the benchmark keeps thousands of them open.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::codec::{self, Connect, DecodeError, Packet, Publish, SubscribeTopic, Version};

/// Largest packet the client accepts from a peer.
const MAX_INCOMING: usize = 16 * 1024 * 1024;
/// Initial read-buffer capacity; small because most clients sit idle.
const INITIAL_BUF: usize = 256;
/// An empty read buffer larger than this (left by a big packet) is replaced by a small one.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Why [`Client::recv`] (or a helper built on it) returned without a packet.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("timed out")]
    Timeout,
    /// The peer closed the connection at a packet boundary.
    #[error("connection closed by peer")]
    Closed,
    /// Includes `UnexpectedEof` when the peer closed in the middle of a packet.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid packet; the connection is unusable afterwards.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
}

/// One MQTT connection. Packets that helpers such as [`Client::subscribe`] receive while waiting
/// for their own reply are queued and returned by later [`Client::recv`] calls first.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    queue: VecDeque<Packet>,
    version: Version,
    last_id: u16,
    /// The broker's Receive Maximum from its CONNACK (65 535 when it gave none, and for v3).
    send_quota: u16,
}

impl Client {
    /// Opens a TCP connection; no MQTT CONNECT is sent yet.
    pub async fn connect_tcp(addr: SocketAddr, version: Version) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        // Small packets must leave at once: tests measure latency and keep-alive timing.
        stream.set_nodelay(true)?;
        Ok(Client::from_stream(stream, version))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream, version: Version) -> Client {
        Client {
            stream,
            buf: BytesMut::with_capacity(INITIAL_BUF),
            queue: VecDeque::new(),
            version,
            last_id: 0,
            send_quota: u16::MAX,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// How many QoS 1 and 2 PUBLISHes the broker takes unacknowledged from this client: its
    /// CONNACK's Receive Maximum (MQTT 5); sending more is a protocol error (DISCONNECT 0x93).
    pub fn send_quota(&self) -> u16 {
        self.send_quota
    }

    /// The next packet identifier: 1, 2, … 65535, 1, … (0 is not a valid identifier).
    pub fn next_packet_id(&mut self) -> u16 {
        self.last_id = self.last_id.checked_add(1).unwrap_or(1);
        self.last_id
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, p: &Packet) -> io::Result<()> {
        // Sized so a typical packet encodes without regrowing the buffer.
        let hint = match p {
            Packet::Publish(p) => p.payload.len() + p.topic.len() + 32,
            _ => 64,
        };
        let mut out = BytesMut::with_capacity(hint);
        codec::encode(p, self.version, &mut out);
        self.stream.write_all(&out).await
    }

    /// Writes bytes as they are, for malformed-input tests.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet: a queued one if any, otherwise one read from the socket within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        match self.queue.pop_front() {
            Some(p) => Ok(p),
            None => self.read_packet(Instant::now() + timeout).await,
        }
    }

    /// Sends CONNECT and returns the first packet that comes back (normally the CONNACK).
    pub async fn handshake(&mut self, c: Connect, timeout: Duration) -> Result<Packet, RecvError> {
        let deadline = Instant::now() + timeout;
        self.send_by(&Packet::Connect(c), deadline).await?;
        let answer = self.read_packet(deadline).await?;
        if let Packet::ConnAck { properties, .. } = &answer {
            self.send_quota = properties.receive_maximum.unwrap_or(u16::MAX);
        }
        Ok(answer)
    }

    /// True if the peer closes the connection (EOF or error) within `timeout`. Everything
    /// received meanwhile, including queued packets and a DISCONNECT, is discarded.
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        self.queue.clear();
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_packet(deadline).await {
                Ok(_) => {}
                Err(RecvError::Timeout) => return false,
                Err(RecvError::Closed | RecvError::Io(_)) => return true,
                // Framing is lost, so drain raw bytes until the peer closes.
                Err(RecvError::Decode(_)) => return self.drain_until_closed(deadline).await,
            }
        }
    }

    /// Subscribes with the next packet id and returns the SUBACK codes.
    pub async fn subscribe(&mut self, topics: Vec<SubscribeTopic>, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_packet_id();
        self.send_by(
            &Packet::Subscribe { packet_id: id, topics, subscription_id: None, user_properties: Vec::new() },
            deadline,
        )
        .await?;
        loop {
            match self.read_packet(deadline).await? {
                Packet::SubAck { packet_id, codes, .. } if packet_id == id => return Ok(codes),
                other => self.queue.push_back(other),
            }
        }
    }

    /// Publishes and completes the QoS flow: QoS 0 returns `None`, QoS 1 the PUBACK code, QoS 2
    /// the PUBREC code (after PUBREL/PUBCOMP unless PUBREC refused the message).
    ///
    /// QoS above 2 is sent as the invalid QoS 3 without waiting, for malformed-input tests.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        timeout: Duration,
    ) -> Result<Option<u8>, RecvError> {
        let deadline = Instant::now() + timeout;
        let packet_id = (qos > 0).then(|| self.next_packet_id());
        let p = Publish {
            topic: topic.to_owned(),
            payload: bytes::Bytes::copy_from_slice(payload),
            qos,
            retain,
            packet_id,
            ..Publish::default()
        };
        self.send_by(&Packet::Publish(p), deadline).await?;
        let Some(id) = packet_id.filter(|_| qos <= 2) else {
            return Ok(None);
        };
        if qos == 1 {
            let code = self
                .wait_for(deadline, |p| match p {
                    Packet::PubAck { packet_id, code } if *packet_id == id => Some(*code),
                    _ => None,
                })
                .await?;
            return Ok(Some(code));
        }
        let rec = self
            .wait_for(deadline, |p| match p {
                Packet::PubRec { packet_id, code } if *packet_id == id => Some(*code),
                _ => None,
            })
            .await?;
        // A failure reason code ends the QoS 2 flow: no PUBREL may follow it.
        if rec < 0x80 {
            self.send_by(&Packet::PubRel { packet_id: id, code: 0 }, deadline).await?;
            self.wait_for(deadline, |p| match p {
                Packet::PubComp { packet_id, .. } if *packet_id == id => Some(()),
                _ => None,
            })
            .await?;
        }
        Ok(Some(rec))
    }

    /// Reads until `pick` accepts a packet; the others are queued for [`Client::recv`].
    async fn wait_for<T>(&mut self, deadline: Instant, pick: impl Fn(&Packet) -> Option<T>) -> Result<T, RecvError> {
        loop {
            let p = self.read_packet(deadline).await?;
            match pick(&p) {
                Some(v) => return Ok(v),
                None => self.queue.push_back(p),
            }
        }
    }

    async fn send_by(&mut self, p: &Packet, deadline: Instant) -> Result<(), RecvError> {
        match timeout_at(deadline, self.send(p)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RecvError::Timeout),
        }
    }

    /// Decodes the next packet from the socket (never from the queue). Reading into `buf` is
    /// cancel-safe, so a timeout never loses bytes.
    async fn read_packet(&mut self, deadline: Instant) -> Result<Packet, RecvError> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, MAX_INCOMING)? {
                if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
                    self.buf = BytesMut::with_capacity(INITIAL_BUF);
                }
                return Ok(p);
            }
            self.buf.reserve(INITIAL_BUF);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) if self.buf.is_empty() => return Err(RecvError::Closed),
                Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn drain_until_closed(&mut self, deadline: Instant) -> bool {
        loop {
            self.buf.clear();
            self.buf.reserve(INITIAL_BUF);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
