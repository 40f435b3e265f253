//! Free loopback ports, for servers that must be told their port before they start (a
//! redis-server, nodes listed up front); everything else binds port 0.

/// A port nothing listens on right now (the kernel's pick for an ephemeral bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the kernel hands out an ephemeral loopback port")
}
