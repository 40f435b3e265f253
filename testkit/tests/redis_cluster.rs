//! The harness's Redis Cluster: a cluster client reaches every master through it, a key is served
//! again after its master is killed, and its hash slots are the ones Redis computes.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use imtestkit::redis_cluster::RedisCluster;
use redis::AsyncCommands as _;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

async fn connect(cluster: &RedisCluster) -> Result<ClusterConnection> {
    let urls: Vec<String> = cluster
        .addrs()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    Ok(ClusterClient::new(urls)?.get_async_connection().await?)
}

#[tokio::test]
async fn a_cluster_client_spreads_keys_over_the_three_masters() -> Result<()> {
    let started = Instant::now();
    let cluster = RedisCluster::start()?;
    eprintln!("RedisCluster::start took {:?}", started.elapsed());
    let masters = cluster.master_ports()?;
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    let mut conn = connect(&cluster).await?;
    let mut homes = BTreeSet::new();
    for i in 0..12 {
        let key = format!("key{i}");
        let () = conn.set(&key, i).await?;
        let got: i64 = conn.get(&key).await?;
        assert_eq!(got, i);
        let home = cluster.master_of_slot(RedisCluster::slot_of(&key))?;
        // Asked directly, without the cluster client's routing: a master that did not hold
        // the key would answer MOVED.
        let mut direct = redis::Client::open(format!("redis://127.0.0.1:{home}"))?
            .get_multiplexed_async_connection()
            .await?;
        let there: Option<i64> = direct.get(&key).await?;
        assert_eq!(there, Some(i), "{key} on {home}");
        homes.insert(home);
    }
    assert_eq!(homes, masters.into_iter().collect::<BTreeSet<_>>());
    Ok(())
}

/// Multi-threaded so that the connection's task keeps running while the test blocks on the
/// failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_served_again_after_its_master_is_killed() -> Result<()> {
    let mut cluster = RedisCluster::start()?;
    let mut conn = connect(&cluster).await?;
    let key = "victim";
    let () = conn.set(key, "before").await?;
    let slot = RedisCluster::slot_of(key);

    let killing = Instant::now();
    let killed = tokio::task::block_in_place(|| cluster.kill_master_of_slot(slot))?;
    eprintln!(
        "RedisCluster::kill_master_of_slot took {:?}",
        killing.elapsed()
    );
    let promoted = cluster.master_of_slot(slot)?;
    assert_ne!(promoted, killed);
    let masters = cluster.master_ports()?;
    assert!(!masters.contains(&killed), "masters: {masters:?}");
    assert_eq!(masters.len(), 3, "masters: {masters:?}");

    // The same connection: it has to find out by itself that the slot moved.
    let served = Instant::now();
    let value = imtestkit::wait_for(
        "SET/GET on the promoted replica",
        Duration::from_secs(20),
        || {
            let mut conn = conn.clone();
            async move {
                let round_trip = async {
                    let () = conn.set(key, "after").await?;
                    conn.get::<_, String>(key).await
                };
                match tokio::time::timeout(Duration::from_secs(2), round_trip).await {
                    Ok(Ok(value)) => Some(value),
                    _ => None,
                }
            }
        },
    )
    .await?;
    assert_eq!(value, "after");
    eprintln!(
        "the cluster client served {key} again {:?} after the failover",
        served.elapsed()
    );
    Ok(())
}

#[test]
fn slot_of_agrees_with_cluster_keyslot() -> Result<()> {
    let cluster = RedisCluster::start()?;
    let port = cluster.master_ports()?[0].to_string();
    let keys = [
        "",
        "123456789",
        "foo",
        "imtest:client:alice",
        "{user1}.inbox",
        "{user1}.presence",
        "a{}b",
        "{}",
        "x{y",
        "y}x{",
        "a{b}c{d}",
        "{{x}}",
        "schlüssel{ü}",
    ];
    for key in keys {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "CLUSTER", "KEYSLOT", key])
            .output()?;
        let want: u16 = String::from_utf8(out.stdout)?.trim().parse()?;
        assert_eq!(RedisCluster::slot_of(key), want, "slot of {key:?}");
    }
    // The CRC16/XMODEM check value, already below 16384.
    assert_eq!(RedisCluster::slot_of("123456789"), 0x31c3);
    Ok(())
}
