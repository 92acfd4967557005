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

async fn read_frame<T, M>(io: &mut T, limit: usize, what: &str) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(too_large(what, len, limit));
    }
    let mut buf = Vec::with_capacity(len);
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated {what}"),
        ));
    }
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .with_limit(len as u64)
        .reject_trailing_bytes()
        .deserialize(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}: {e}")))
}

async fn write_frame<T, M>(io: &mut T, value: &M, limit: usize, what: &str) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
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
