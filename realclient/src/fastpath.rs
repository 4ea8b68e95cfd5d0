//! The shared-memory fast path: a dummy creates a `CallRing` in memory it
//! registered and asks the real client to serve it ([`RealClientService::attach_ring`]).
//! One thread per ring takes requests (spin, then futex), the runtime runs them, and
//! the answer goes back through the ring: a call costs no socket round trip, which on
//! small operations is most of the latency.

use std::sync::Arc;
use std::time::Duration;

use mooncake_ipc::Session;
use mooncake_proto::realclient::{RealClientService, RingRequest, RingResponse};
use mooncake_shm::CallRing;
use tarpc::context;

use crate::service::Handler;

/// Threads serving one ring. Each runs the calls it takes to completion on its own
/// thread (no hand-off to the runtime's workers, which costs a wake-up per call);
/// two let a slow call (a remote transfer) overlap with quick ones.
const RING_THREADS: usize = 2;

/// Serves `ring` for `session` until the session closes.
pub(crate) fn serve(
    handler: Handler,
    ring: CallRing,
    session: Arc<Session>,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<()> {
    let max_response = ring.shape().resp_size as usize;
    for _ in 0..RING_THREADS {
        let mut server = ring.server();
        let handler = handler.clone();
        let session = session.clone();
        let runtime = runtime.clone();
        std::thread::Builder::new()
            .name("mc-ring".into())
            .spawn(move || {
                crate::client::mark_ring_thread();
                // The thread's own runtime: a call's master round trip is
                // written and read on this thread (see `client::thread_master`).
                let own_runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                // The handlers read nothing from a call's context (no deadline, no
                // trace): one per thread saves a clock read and a trace id per call.
                let ctx = context::current();
                let mut answer: Vec<u8> = Vec::with_capacity(4096);
                while !session.is_closed() {
                    let request = match server.recv(Duration::from_millis(100)) {
                        Ok(Some(r)) => r,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(
                                session = session.id(),
                                "dropped a corrupt ring request: {e}"
                            );
                            continue;
                        }
                    };
                    let call = async {
                        handler.client().prepare_thread_master().await;
                        dispatch(handler.clone(), &request.data, ctx).await
                    };
                    let response = match &own_runtime {
                        Ok(own) => own.block_on(call),
                        Err(_) => runtime.block_on(dispatch(handler.clone(), &request.data, ctx)),
                    };
                    // One buffer for every answer of this thread: no allocation
                    // (and no growth by doubling) per call.
                    answer.clear();
                    answer = postcard::to_extend(&response, answer).unwrap_or_default();
                    if answer.len() > max_response {
                        answer.clear();
                        answer = postcard::to_extend(&RingResponse::TooLarge, answer)
                            .unwrap_or_default();
                    }
                    let _ = server.reply(request.slot, &answer);
                }
                tracing::debug!(session = session.id(), "ring closed with its session");
            })?;
    }
    Ok(())
}

async fn dispatch(h: Handler, request: &[u8], c: context::Context) -> RingResponse {
    let Ok(request) = postcard::from_bytes::<RingRequest>(request) else {
        return RingResponse::Malformed;
    };
    h.client().metrics.ring_request();
    match request {
        RingRequest::Ping => RingResponse::Unit(h.ping(c).await),
        RingRequest::Exist(keys) => RingResponse::Bools(h.exist(c, keys).await),
        RingRequest::GetSize(key) => RingResponse::Size(h.get_size(c, key).await),
        RingRequest::GetInto {
            keys,
            dests,
            released,
            local_disk,
        } => RingResponse::Outcomes(h.get_into(c, keys, dests, released, local_disk).await),
        RingRequest::PutStart {
            place,
            keys,
            sizes,
            config,
            upsert,
        } => RingResponse::Started(h.put_start(c, keys, sizes, config, upsert, place).await),
        RingRequest::PutComplete(items) => RingResponse::Units(h.put_complete(c, items).await),
        RingRequest::PutDirect {
            items,
            config,
            upsert,
        } => RingResponse::Units(h.put_direct(c, items, config, upsert).await),
        RingRequest::Remove { keys, force } => RingResponse::Units(h.remove(c, keys, force).await),
        RingRequest::ReleaseReads(reads) => {
            h.release_reads(c, reads).await;
            RingResponse::Unit(Ok(()))
        }
    }
}
