//! A fake upstream resolver (the cluster's DNS, in the tests' "world" namespace): answers A and
//! AAAA from a table over UDP and TCP, NXDOMAIN for names it does not know, and records every
//! query it receives, so a test can assert that a refused name never reached it.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// One query as the resolver received it: the name (lowercase, no trailing dot) and the type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The query name.
    pub name: String,
    /// The record type, as hickory names it (`A`, `AAAA`, `TXT`...).
    pub qtype: String,
}

/// The running resolver; its tasks end with the test's runtime.
#[derive(Clone)]
pub struct FakeResolver {
    table: Arc<Vec<(String, IpAddr)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeResolver {
    /// Serves `table` (name → address; several rows per name allowed) on each UDP socket and
    /// TCP listener (std sockets, typically made inside a namespace).
    pub fn start(
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
        table: &[(&str, &str)],
    ) -> Result<FakeResolver> {
        let mut rows = Vec::new();
        for (name, ip) in table {
            rows.push((name.to_ascii_lowercase(), ip.parse::<IpAddr>()?));
        }
        let resolver = FakeResolver {
            table: Arc::new(rows),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        for socket in udp {
            socket.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(socket)?;
            let r = resolver.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    if let Some(answer) = r.answer(&buf[..n]) {
                        let _ = socket.send_to(&answer, peer).await;
                    }
                }
            });
        }
        for listener in tcp {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            let r = resolver.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let r = r.clone();
                    tokio::spawn(async move {
                        while let Ok(len) = stream.read_u16().await {
                            let mut buf = vec![0u8; usize::from(len)];
                            if stream.read_exact(&mut buf).await.is_err() {
                                return;
                            }
                            let Some(answer) = r.answer(&buf) else {
                                return;
                            };
                            let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&answer);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        Ok(resolver)
    }

    /// Every query received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// True when some received query's name contains `fragment`.
    pub fn saw(&self, fragment: &str) -> bool {
        self.seen().iter().any(|s| s.name.contains(fragment))
    }

    fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(bytes).ok()?;
        let question = query.queries.first()?.clone();
        let name = question.name().to_ascii().to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name).to_string();
        self.seen.lock().unwrap().push(Seen {
            name: name.clone(),
            qtype: question.query_type().to_string(),
        });
        let mut out = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        out.metadata.recursion_desired = query.metadata.recursion_desired;
        out.metadata.recursion_available = true;
        out.add_query(question.clone());
        let rows: Vec<IpAddr> = self
            .table
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, ip)| *ip)
            .collect();
        if rows.is_empty() {
            out.metadata.response_code = ResponseCode::NXDomain;
        }
        let owner = Name::from_str(&format!("{name}.")).ok()?;
        for ip in rows {
            let data = match (ip, question.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A::from(v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA::from(v6)),
                _ => continue,
            };
            // A long TTL, so the tests can see tollgate cap it.
            out.add_answer(Record::from_rdata(owner.clone(), 3600, data));
        }
        out.to_vec().ok()
    }
}
