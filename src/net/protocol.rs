//! The `/fhenode/rpc/1` request-response protocol: length-prefixed bincode frames with explicit,
//! configured size limits checked before anything is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/fhenode/rpc/1");
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/fhenode/kad/1");
pub const IDENTIFY_PROTOCOL: &str = "/fhenode/id/1";
pub const ANNOUNCE_TOPIC: &str = "fhenode/announce/1";

/// A request one node sends another. New kinds are added at the end (bincode encodes the
/// variant index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Connectivity and size-limit check: answered with the same bytes.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Messages for the aggregation actor (session protocol), opaque to the network layer.
    Aggregation(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Messages for the inference actor.
    Inference(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes to be counted and dropped: the plaintext baseline of `fhenode bench round`.
    Sink(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Echo(_) => "echo",
            Request::Aggregation(_) => "aggregation",
            Request::Inference(_) => "inference",
            Request::Sink(_) => "sink",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    Aggregation(#[serde(with = "serde_bytes")] Vec<u8>),
    Inference(#[serde(with = "serde_bytes")] Vec<u8>),
    /// How many bytes a `Sink` request carried.
    Sunk(u64),
    /// The request was understood but refused; `code` is stable, `message` is for humans.
    Error {
        code: String,
        message: String,
    },
}

impl Response {
    /// A refusal: a stable `code` and a message for humans.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Response::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// What a node answers a request of a kind it does not serve.
    pub fn unsupported(request: &Request) -> Self {
        Response::error(
            "unsupported",
            format!("this node does not serve {} requests", request.kind()),
        )
    }
}

/// Frames are a 4-byte little-endian length, then that many bytes of bincode.
#[derive(Clone, Debug)]
pub struct RpcCodec {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

impl RpcCodec {
    pub fn new(max_request_bytes: usize, max_response_bytes: usize) -> Self {
        RpcCodec {
            max_request_bytes,
            max_response_bytes,
        }
    }
}

fn too_large(what: &str, len: usize, limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} of {len} bytes exceeds the limit of {limit} bytes"),
    )
}

/// Encoded size of a message, to refuse oversized ones before they are sent.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    bincode::serialized_size(value)
        .map(|n| n as usize)
        .unwrap_or(usize::MAX)
}

/// A message whose byte-carrying variants are read and written without an intermediate copy.
/// The wire format stays bincode (fixint): a variant carrying only bytes is its `u32` variant
/// index, a `u64` length and the bytes, so the header is written and read by hand and the
/// bytes go straight between the stream and their own buffer. Ciphertexts are megabytes:
/// serialising them into a frame buffer and deserialising them out of one were two of the
/// largest copies on a submission's path.
pub trait Frame: Serialize + for<'de> Deserialize<'de> {
    /// The variant index and bytes of a variant that carries only bytes.
    fn bytes_variant(&self) -> Option<(u32, &[u8])>;
    /// Rebuilds a bytes-only variant from its index; `Err` gives the bytes back otherwise.
    fn from_bytes_variant(variant: u32, bytes: Vec<u8>) -> Result<Self, Vec<u8>>;
}

impl Frame for Request {
    fn bytes_variant(&self) -> Option<(u32, &[u8])> {
        Some(match self {
            Request::Echo(b) => (0, b),
            Request::Aggregation(b) => (1, b),
            Request::Inference(b) => (2, b),
            Request::Sink(b) => (3, b),
        })
    }
    fn from_bytes_variant(variant: u32, bytes: Vec<u8>) -> Result<Self, Vec<u8>> {
        match variant {
            0 => Ok(Request::Echo(bytes)),
            1 => Ok(Request::Aggregation(bytes)),
            2 => Ok(Request::Inference(bytes)),
            3 => Ok(Request::Sink(bytes)),
            _ => Err(bytes),
        }
    }
}

impl Frame for Response {
    fn bytes_variant(&self) -> Option<(u32, &[u8])> {
        match self {
            Response::Echo(b) => Some((0, b)),
            Response::Aggregation(b) => Some((1, b)),
            Response::Inference(b) => Some((2, b)),
            Response::Sunk(_) | Response::Error { .. } => None,
        }
    }
    fn from_bytes_variant(variant: u32, bytes: Vec<u8>) -> Result<Self, Vec<u8>> {
        match variant {
            0 => Ok(Response::Echo(bytes)),
            1 => Ok(Response::Aggregation(bytes)),
            2 => Ok(Response::Inference(bytes)),
            _ => Err(bytes),
        }
    }
}

/// Variant index and byte length: the bincode header of a bytes-only variant.
const BYTES_HEADER: usize = 12;

fn malformed(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}: {e}"))
}

/// Fills `buf`; a stream that ends inside a frame is named as a truncated `what`.
async fn read_exact_or_truncated<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut [u8],
    what: &str,
) -> io::Result<()> {
    io.read_exact(buf).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            io::Error::new(io::ErrorKind::UnexpectedEof, format!("truncated {what}"))
        }
        _ => e,
    })
}

async fn read_frame<T, M>(io: &mut T, limit: usize, what: &str) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: Frame,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(too_large(what, len, limit));
    }
    let mut header = [0u8; BYTES_HEADER];
    let head = len.min(BYTES_HEADER);
    read_exact_or_truncated(io, &mut header[..head], what).await?;
    let mut rest = vec![0u8; len - head];
    read_exact_or_truncated(io, &mut rest, what).await?;
    if head == BYTES_HEADER {
        let variant = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut declared = [0u8; 8];
        declared.copy_from_slice(&header[4..]);
        if u64::from_le_bytes(declared) == rest.len() as u64 {
            match M::from_bytes_variant(variant, rest) {
                Ok(message) => return Ok(message),
                Err(rest) => return decode_frame(&header, &rest, what),
            }
        }
        return decode_frame(&header, &rest, what);
    }
    decode_frame(&header[..head], &rest, what)
}

/// The general path: bincode over the whole frame (small messages, and anything malformed).
fn decode_frame<M: Frame>(head: &[u8], rest: &[u8], what: &str) -> io::Result<M> {
    use bincode::Options;
    let mut whole = Vec::with_capacity(head.len() + rest.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(rest);
    bincode::options()
        .with_fixint_encoding()
        .with_limit(whole.len() as u64)
        .reject_trailing_bytes()
        .deserialize(&whole)
        .map_err(|e| malformed(what, e))
}

async fn write_frame<T, M>(io: &mut T, value: &M, limit: usize, what: &str) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Frame,
{
    if let Some((variant, bytes)) = value.bytes_variant() {
        let len = BYTES_HEADER + bytes.len();
        if len > limit || len > u32::MAX as usize {
            return Err(too_large(what, len, limit));
        }
        let mut header = [0u8; 4 + BYTES_HEADER];
        header[..4].copy_from_slice(&(len as u32).to_le_bytes());
        header[4..8].copy_from_slice(&variant.to_le_bytes());
        header[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        io.write_all(&header).await?;
        io.write_all(bytes).await?;
        return io.close().await;
    }
    let bytes = bincode::serialize(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if bytes.len() > limit || bytes.len() > u32::MAX as usize {
        return Err(too_large(what, bytes.len(), limit));
    }
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request_bytes, "request").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response_bytes, "response").await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request_bytes, "request").await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response_bytes, "response").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use proptest::prelude::*;

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn round_trip_and_limits() {
        futures::executor::block_on(async {
            let mut codec = RpcCodec::new(1024, 1024);
            let mut buf = Cursor::new(Vec::new());
            codec
                .write_request(&RPC_PROTOCOL, &mut buf, Request::Echo(vec![7; 100]))
                .await
                .unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            let req = codec.read_request(&RPC_PROTOCOL, &mut rd).await.unwrap();
            assert_eq!(req, Request::Echo(vec![7; 100]));

            // Too large to send.
            let mut buf = Cursor::new(Vec::new());
            let e = codec
                .write_request(&RPC_PROTOCOL, &mut buf, Request::Echo(vec![0; 2000]))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("exceeds the limit"), "{e}");

            // A hostile length prefix is refused before allocating.
            let mut rd = Cursor::new(u32::MAX.to_le_bytes().to_vec());
            let e = codec
                .read_request(&RPC_PROTOCOL, &mut rd)
                .await
                .unwrap_err();
            assert!(e.to_string().contains("exceeds the limit"), "{e}");

            // Truncated body, trailing bytes, garbage.
            let mut truncated = frame(&[0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1]);
            truncated.truncate(8);
            assert!(codec
                .read_request(&RPC_PROTOCOL, &mut Cursor::new(truncated))
                .await
                .is_err());
            let mut good = bincode::serialize(&Request::Echo(vec![1])).unwrap();
            good.push(0);
            assert!(codec
                .read_request(&RPC_PROTOCOL, &mut Cursor::new(frame(&good)))
                .await
                .is_err());
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The hand-written header path and bincode agree in both directions, for every
        /// variant, so peers on either path understand each other.
        #[test]
        fn frames_are_bincode(kind in 0u32..4, bytes in proptest::collection::vec(any::<u8>(), 0..300), n in any::<u64>()) {
            futures::executor::block_on(async {
                let mut codec = RpcCodec::new(1 << 20, 1 << 20);
                let req = Request::from_bytes_variant(kind, bytes.clone()).unwrap();
                let mut buf = Cursor::new(Vec::new());
                codec.write_request(&RPC_PROTOCOL, &mut buf, req.clone()).await.unwrap();
                prop_assert_eq!(buf.get_ref().clone(), frame(&bincode::serialize(&req).unwrap()));
                let back = codec.read_request(&RPC_PROTOCOL, &mut Cursor::new(buf.into_inner())).await.unwrap();
                prop_assert_eq!(back, req);
                let responses = [
                    Response::from_bytes_variant(kind % 3, bytes.clone()).unwrap(),
                    Response::Sunk(n),
                    Response::Error { code: "c".into(), message: format!("{n}") },
                ];
                for res in responses {
                    let mut buf = Cursor::new(Vec::new());
                    codec.write_response(&RPC_PROTOCOL, &mut buf, res.clone()).await.unwrap();
                    prop_assert_eq!(buf.get_ref().clone(), frame(&bincode::serialize(&res).unwrap()));
                    let back = codec.read_response(&RPC_PROTOCOL, &mut Cursor::new(buf.into_inner())).await.unwrap();
                    prop_assert_eq!(back, res);
                }
                Ok(())
            })?;
        }

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            futures::executor::block_on(async {
                let mut codec = RpcCodec::new(1 << 20, 1 << 20);
                let _ = codec.read_request(&RPC_PROTOCOL, &mut Cursor::new(frame(&bytes))).await;
                let _ = codec.read_response(&RPC_PROTOCOL, &mut Cursor::new(bytes.clone())).await;
            });
        }
    }
}
