//! A RESP2 client just big enough for the cluster harness: one command per fresh `TcpStream`,
//! its reply parsed (simple strings, integers, bulk strings, arrays; an error reply fails).

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// A RESP2 reply; enough of the protocol for the cluster harness's commands.
#[derive(Debug)]
pub(crate) enum Resp {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    pub(crate) fn text(self) -> Result<String> {
        match self {
            Self::Simple(s) => Ok(s),
            Self::Bulk(Some(b)) => Ok(String::from_utf8(b)?),
            other => bail!("expected text, got {other:?}"),
        }
    }
}

/// Sends one command on a fresh connection and reads its reply. A fresh connection each time:
/// the nodes come and go, and a poll every 50 ms costs nothing worth pooling.
pub(crate) fn command(port: u16, args: &[&str]) -> Result<Resp> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    stream.write_all(&request)?;
    read_reply(&mut BufReader::new(stream)).with_context(|| format!("{args:?} on port {port}"))
}

fn read_reply(r: &mut impl BufRead) -> Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed");
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| anyhow!("empty reply"))?;
    let len = || -> Result<i64> { rest.parse().with_context(|| format!("bad length {line:?}")) };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => bail!("error reply: {rest}"),
        ":" => Resp::Int(len()?),
        "$" => match usize::try_from(len()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match usize::try_from(len()?) {
            Err(_) => Resp::Array(Vec::new()),
            Ok(n) => Resp::Array((0..n).map(|_| read_reply(r)).collect::<Result<_>>()?),
        },
        _ => bail!("unknown reply {line:?}"),
    })
}
