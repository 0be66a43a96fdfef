//! Active health checks: each shard probes its own targets (`GET path`,
//! 2xx passes) every `interval`. A target turns unhealthy after
//! `unhealthy` failed probes in a row and healthy again after `healthy`
//! passes; the balancer skips unhealthy targets. Per shard on purpose:
//! shards share nothing, and N shards probing every 2 s is negligible load.

use std::rc::Rc;
use std::time::Instant;

use crate::upstream::client::{self, RespBuf};
use crate::upstream::Upstream;

/// Probe response heads are small; this buffer holds one with room.
const PROBE_BUFFER_BYTES: usize = 8 * 1024;

/// Body bytes of a probe's answer read (and dropped) before it counts as
/// complete: health endpoints answer a few bytes; a large one is not
/// read whole every interval.
const PROBE_MAX_BODY_BYTES: usize = 64 * 1024;

/// Runs until the shard's executor ends or a reload retires `up`.
pub(crate) async fn run(up: Rc<Upstream>) {
    let Some(hc) = up.cfg.health_check.clone() else {
        return;
    };
    let mut passes = vec![0u32; up.targets.len()];
    let mut fails = vec![0u32; up.targets.len()];
    loop {
        glommio::timer::sleep(hc.interval).await;
        if up.retired.get() {
            // A reload replaced this upstream; its successor probes now.
            return;
        }
        for (i, t) in up.targets.iter().enumerate() {
            let ok = probe(&up, i, &hc.path, hc.timeout).await;
            if ok {
                passes[i] += 1;
                fails[i] = 0;
                if !t.healthy.get() && passes[i] >= hc.healthy {
                    t.healthy.set(true);
                }
            } else {
                fails[i] += 1;
                passes[i] = 0;
                if t.healthy.get() && fails[i] >= hc.unhealthy {
                    t.healthy.set(false);
                }
            }
        }
    }
}

async fn probe(up: &Upstream, i: usize, path: &str, timeout: std::time::Duration) -> bool {
    let t = &up.targets[i];
    let deadline = Instant::now() + timeout;
    let attempt = async {
        let mut stream = client::connect(t, timeout).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shardline-health-check\r\nConnection: close\r\n\r\n",
            t.name
        );
        client::send(&mut stream, req.as_bytes()).await.ok()?;
        let mut buf = RespBuf::new(vec![0; PROBE_BUFFER_BYTES]);
        let head = client::read_head(&mut stream, &mut buf, false).await.ok()?;
        // The whole answer within the timeout: a target that sends a 200
        // head and then stalls is not healthy.
        let mut body = client::BodyReader::new(head.framing);
        let mut sink = Vec::new();
        let mut read = 0;
        while read <= PROBE_MAX_BODY_BYTES {
            sink.clear();
            match body
                .next(&mut stream, &mut buf, &mut sink, timeout, None)
                .await
            {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(_) => return Some(false),
            }
        }
        Some((200..300).contains(&head.status))
    };
    matches!(
        client::with_deadline(deadline, attempt).await,
        Some(Some(true))
    )
}
