//! Cross-process tests: the test binary re-executes itself as a child process
//! (`child_process_entry`, selected by `MC_IPC_CHILD`), so fds, mappings, credentials
//! and SIGKILL are exercised between two real processes.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use mooncake_ipc::client::control_transport;
use mooncake_ipc::{IpcClient, IpcServer, IpcServerConfig, PeerPolicy, Session};
use mooncake_proto::ErrorCode;
use mooncake_shm::callring::RingShape;
use mooncake_shm::{CallRing, Region, RegionOptions};

#[tarpc::service]
trait TestService {
    /// Writes `byte` over the client range slowly (one chunk per ms), like a long
    /// transfer into dummy memory.
    async fn slow_fill(addr: u64, len: u64, byte: u8, millis: u64) -> Result<(), ErrorCode>;
    /// Reads the client range.
    async fn read(addr: u64, len: u64) -> Result<Vec<u8>, ErrorCode>;
}

#[derive(Clone)]
struct Service {
    session: Arc<Session>,
    fills_done: Arc<std::sync::atomic::AtomicU64>,
}

impl TestService for Service {
    async fn slow_fill(
        self,
        _: Context,
        addr: u64,
        len: u64,
        byte: u8,
        millis: u64,
    ) -> Result<(), ErrorCode> {
        let t = self.session.translate(addr, len)?;
        let chunk = (len / millis.max(1)).max(1);
        let mut at = 0;
        while at < len {
            let n = chunk.min(len - at);
            t.write(at, &vec![byte; n as usize]).map_err(|e| e.code())?;
            at += n;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.fills_done
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    async fn read(self, _: Context, addr: u64, len: u64) -> Result<Vec<u8>, ErrorCode> {
        let t = self.session.translate(addr, len)?;
        let mut out = vec![0; len as usize];
        t.read(0, &mut out).map_err(|e| e.code())?;
        Ok(out)
    }
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mc-ipc-{tag}-{}.sock", std::process::id()))
}

fn spawn_child(role: &str, socket: &Path) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MC_IPC_CHILD", role)
    .env("MC_IPC_SOCKET", socket)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    if role == "other-uid" {
        cmd.uid(65534).gid(65534);
    }
    cmd.spawn().expect("spawn child")
}

/// Lines the child prints with the `MC:` prefix (the test harness prints its own).
struct ChildOutput(tokio::io::Lines<BufReader<tokio::process::ChildStdout>>);

impl ChildOutput {
    fn of(child: &mut Child) -> Self {
        ChildOutput(BufReader::new(child.stdout.take().unwrap()).lines())
    }
    async fn next(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.0.next_line())
                .await
                .expect("child output in time")
                .unwrap()
                .expect("child still running");
            // libtest prints "test child_process_entry ... " without a newline first.
            if let Some(at) = line.find("MC:") {
                return line[at + 3..].to_string();
            }
        }
    }
}

fn serve(
    conn: mooncake_ipc::IpcConnection,
    fills_done: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<Arc<Session>> {
    tokio::spawn(async move {
        let (session, transport) = conn.into_transport();
        let service = Service {
            session: session.clone(),
            fills_done,
        };
        BaseChannel::with_defaults(transport)
            .execute(service.serve())
            .for_each(|f| async move {
                tokio::spawn(f);
            })
            .await;
        // The client is gone: release its mappings once in-flight calls finish.
        session.close(Duration::from_secs(30)).await;
        session
    })
}

#[tokio::test]
async fn fds_pass_and_writes_are_visible_in_both_processes() {
    let path = socket_path("visible");
    let server = IpcServer::bind(IpcServerConfig::new(&path)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket file mode");
    let mut child = spawn_child("register", &path);
    let mut out = ChildOutput::of(&mut child);
    let conn = server.accept().await.unwrap();
    let session = conn.session.clone();
    let base: u64 = out
        .next()
        .await
        .strip_prefix("BASE ")
        .unwrap()
        .parse()
        .unwrap();

    // The child's bytes, read through our own mapping of its memfd.
    let t = session.translate(base + 4096, 13).unwrap();
    let mut got = [0u8; 13];
    t.read(0, &mut got).unwrap();
    assert_eq!(&got, b"child-pattern");
    // Our write, seen by the child.
    session
        .translate(base + 8192, 12)
        .unwrap()
        .write(0, b"parent-wrote")
        .unwrap();
    // Sub-ranges work, ranges outside every registration do not.
    assert!(session.translate(base + (1 << 20) - 1, 1).is_ok());
    assert_eq!(
        session.translate(base + (1 << 20) - 1, 2).err(),
        Some(ErrorCode::InvalidParams)
    );
    assert_eq!(
        session.translate(base - 4096, 8).err(),
        Some(ErrorCode::InvalidParams)
    );
    drop(t);
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"check\n")
        .await
        .unwrap();
    assert_eq!(out.next().await, "SAW parent-wrote");
    assert!(child.wait().await.unwrap().success());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn peers_outside_the_allow_list_are_refused_with_a_reason() {
    let path = socket_path("cred");
    let me = rustix::process::getuid().as_raw();
    let server = IpcServer::bind(
        IpcServerConfig::new(&path).with_policy(PeerPolicy::only([me.wrapping_add(1)])),
    )
    .unwrap();
    let mut child = spawn_child("expect-refusal", &path);
    let mut out = ChildOutput::of(&mut child);
    let accepting = tokio::spawn(async move { server.accept().await.map(|_| ()) });
    assert_eq!(
        out.next().await,
        format!("REFUSED {}", ErrorCode::IllegalClient.as_i32())
    );
    assert!(child.wait().await.unwrap().success());
    assert!(
        !accepting.is_finished(),
        "a refused peer never becomes a connection"
    );
    accepting.abort();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn another_user_is_refused_by_default() {
    if rustix::process::getuid().as_raw() != 0 {
        println!("skipped: needs root to run the child as another uid");
        return;
    }
    let path = socket_path("uid");
    let server = IpcServer::bind(IpcServerConfig::new(&path)).unwrap();
    // Open the file mode so the credential check (not the mode) is what refuses.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut child = spawn_child("other-uid", &path);
    let mut out = ChildOutput::of(&mut child);
    let accepting = tokio::spawn(async move { server.accept().await.map(|_| ()) });
    assert_eq!(
        out.next().await,
        format!("REFUSED {}", ErrorCode::IllegalClient.as_i32())
    );
    assert!(!accepting.is_finished());
    accepting.abort();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn ring_calls_from_concurrent_producers_in_another_process() {
    let path = socket_path("ring");
    let server = IpcServer::bind(IpcServerConfig::new(&path)).unwrap();
    let mut child = spawn_child("ring-producer", &path);
    let mut out = ChildOutput::of(&mut child);
    let conn = server.accept().await.unwrap();
    let session = conn.session.clone();
    let base: u64 = out
        .next()
        .await
        .strip_prefix("RING ")
        .unwrap()
        .parse()
        .unwrap();
    let ring = CallRing::attach(session.region_at(base).expect("ring registered")).unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let mut server = ring.server();
        let mut last: HashMap<u32, i64> = HashMap::new();
        let mut total = 0;
        while total < 4 * 500 {
            let req = server
                .recv(Duration::from_secs(30))
                .unwrap()
                .expect("request in time");
            let text = String::from_utf8(req.data.clone()).unwrap();
            let (t, i) = text.split_once(':').unwrap();
            let (t, i): (u32, i64) = (t.parse().unwrap(), i.parse().unwrap());
            let prev = last.insert(t, i).unwrap_or(-1);
            assert_eq!(
                i,
                prev + 1,
                "each producer's calls arrive once and in order"
            );
            let mut answer = req.data;
            answer.reverse();
            server.reply(req.slot, &answer).unwrap();
            total += 1;
        }
        total
    })
    .await
    .unwrap();
    assert_eq!(seen, 2000);
    assert_eq!(out.next().await, "RING-DONE 2000");
    assert!(child.wait().await.unwrap().success());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_client_killed_mid_call_is_cleaned_up_after_the_call_and_others_are_served() {
    let path = socket_path("kill");
    let server = Arc::new(IpcServer::bind(IpcServerConfig::new(&path)).unwrap());
    let fills = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut victim = spawn_child("slow-call", &path);
    let mut out = ChildOutput::of(&mut victim);
    let conn = server.accept().await.unwrap();
    let served = serve(conn, fills.clone());
    assert_eq!(out.next().await, "CALLING");
    tokio::time::sleep(Duration::from_millis(100)).await;
    victim.start_kill().unwrap(); // SIGKILL while slow_fill writes into its memory
    victim.wait().await.unwrap();
    let session = tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fills.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the in-flight call finished writing before the mappings went away"
    );
    assert!(session.is_closed());
    assert_eq!(session.region_count(), 0);
    assert_eq!(session.translate(0, 1).err(), Some(ErrorCode::RpcFail));

    // The server keeps serving other clients.
    let (client, control) = IpcClient::connect(&path, "").await.unwrap();
    let conn = server.accept().await.unwrap();
    let _served = serve(conn, fills.clone());
    let mem = Region::anonymous("after", 4096, &RegionOptions::default()).unwrap();
    let base = client.register(&mem, 0, 4096).await.unwrap();
    let rpc = TestServiceClient::new(Default::default(), control_transport(control)).spawn();
    rpc.slow_fill(tarpc::context::current(), base, 100, 7, 1)
        .await
        .unwrap()
        .unwrap();
    let mut got = [0u8; 100];
    mem.read(0, &mut got).unwrap();
    assert_eq!(got, [7u8; 100]);
    assert_eq!(
        rpc.read(tarpc::context::current(), base + 4000, 200)
            .await
            .unwrap(),
        Err(ErrorCode::InvalidParams),
        "unregistered range"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn bad_registrations_and_truncated_frames_are_refused_and_the_server_survives() {
    let path = socket_path("bad");
    let server = Arc::new(IpcServer::bind(IpcServerConfig::new(&path)).unwrap());
    let accepter = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut sessions = Vec::new();
            while let Ok(conn) = server.accept().await {
                sessions.push(conn);
            }
        })
    };
    let (client, _control) = IpcClient::connect(&path, "").await.unwrap();
    let mem = Region::anonymous("t", 8192, &RegionOptions::default()).unwrap();
    // A pipe is not a memory file.
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    use std::os::fd::AsFd;
    assert_eq!(
        client.register_raw(pipe_r.as_fd(), 0x1000, 4096, 0).await,
        Err(ErrorCode::InvalidParams)
    );
    // A size larger than the fd's file.
    assert_eq!(
        client.register_raw(mem.fd(), 0x1000, 1 << 20, 0).await,
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        client
            .register_raw(mem.fd(), 0x1000, 4096, u64::MAX - 10)
            .await,
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        client.register_raw(mem.fd(), 0x1000, 0, 0).await,
        Err(ErrorCode::InvalidParams)
    );
    // A regular file on disk.
    let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(
        client.register_raw(exe.as_fd(), 0x1000, 4096, 0).await,
        Err(ErrorCode::InvalidParams)
    );
    // Still usable after all that.
    client.register(&mem, 0, 8192).await.unwrap();

    // Truncated frames and garbage on fresh connections.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0x7f],
        vec![10, 0, 0, 0, 1, 2],
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    ] {
        let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        drop(raw);
    }
    // A wrong token.
    let err = IpcClient::connect(&path, "nope")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), ErrorCode::IllegalClient);
    // An fd channel for a session that does not exist gets refused; normal clients work.
    let (again, _c) = IpcClient::connect(&path, "").await.unwrap();
    again.register(&mem, 4096, 4096).await.unwrap();
    accepter.abort();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn exported_regions_map_in_the_client() {
    let path = socket_path("export");
    let segment =
        Arc::new(Region::anonymous("segment", 1 << 20, &RegionOptions::default()).unwrap());
    segment.write(777, b"global segment").unwrap();
    let server = Arc::new(
        IpcServer::bind(IpcServerConfig::new(&path).with_export("segment", segment.clone()))
            .unwrap(),
    );
    let s2 = server.clone();
    let accepter = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok(conn) = s2.accept().await {
            open.push(conn);
        }
    });
    let (client, _control) = IpcClient::connect(&path, "").await.unwrap();
    let mapped = client
        .open("segment", &RegionOptions::default())
        .await
        .unwrap();
    assert_eq!(mapped.len(), 1 << 20);
    let mut got = [0u8; 14];
    mapped.read(777, &mut got).unwrap();
    assert_eq!(&got, b"global segment");
    mapped.write(0, b"dummy").unwrap();
    let mut back = [0u8; 5];
    segment.read(0, &mut back).unwrap();
    assert_eq!(&back, b"dummy");
    assert_eq!(
        client
            .open("nope", &RegionOptions::default())
            .await
            .err()
            .unwrap()
            .code(),
        ErrorCode::InvalidParams
    );
    accepter.abort();
    let _ = std::fs::remove_file(&path);
}

/// Child-process roles; run only when re-executed by the tests above.
#[tokio::test]
#[ignore = "helper: runs as the child process of the other tests"]
async fn child_process_entry() {
    let Ok(role) = std::env::var("MC_IPC_CHILD") else {
        return;
    };
    let path = PathBuf::from(std::env::var("MC_IPC_SOCKET").unwrap());
    match role.as_str() {
        "register" => {
            let (client, _control) = IpcClient::connect(&path, "").await.unwrap();
            let mem = Region::anonymous("child", 1 << 20, &RegionOptions::default()).unwrap();
            mem.write(4096, b"child-pattern").unwrap();
            let base = client.register(&mem, 0, 1 << 20).await.unwrap();
            println!("MC:BASE {base}");
            let mut stdin = BufReader::new(tokio::io::stdin()).lines();
            assert_eq!(stdin.next_line().await.unwrap().as_deref(), Some("check"));
            let mut got = [0u8; 12];
            mem.read(8192, &mut got).unwrap();
            println!("MC:SAW {}", String::from_utf8_lossy(&got));
        }
        "expect-refusal" | "other-uid" => match IpcClient::connect(&path, "").await {
            Ok(_) => println!("MC:ADMITTED"),
            Err(e) => println!("MC:REFUSED {}", e.code().as_i32()),
        },
        "ring-producer" => {
            let (client, _control) = IpcClient::connect(&path, "").await.unwrap();
            let ring = CallRing::create(RingShape {
                slots: 16,
                resp_slots: 8,
                ..Default::default()
            })
            .unwrap();
            let region = ring.region().clone();
            let base = client
                .register(&region, 0, region.len() as u64)
                .await
                .unwrap();
            println!("MC:RING {base}");
            let caller = Arc::new(ring.client());
            let total = tokio::task::spawn_blocking(move || {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..4u32)
                        .map(|t| {
                            let caller = caller.clone();
                            s.spawn(move || {
                                for i in 0..500 {
                                    let msg = format!("{t}:{i}");
                                    let got = caller
                                        .call(msg.as_bytes(), Duration::from_secs(30))
                                        .unwrap();
                                    let mut expect = msg.into_bytes();
                                    expect.reverse();
                                    assert_eq!(got, expect);
                                }
                                500
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
                })
            })
            .await
            .unwrap();
            println!("MC:RING-DONE {total}");
        }
        "slow-call" => {
            let (client, control) = IpcClient::connect(&path, "").await.unwrap();
            let mem = Region::anonymous("victim", 4 << 20, &RegionOptions::default()).unwrap();
            let base = client.register(&mem, 0, 4 << 20).await.unwrap();
            let rpc =
                TestServiceClient::new(Default::default(), control_transport(control)).spawn();
            println!("MC:CALLING");
            let _ = rpc
                .slow_fill(tarpc::context::current(), base, 4 << 20, 0xab, 1000)
                .await;
            println!("MC:UNEXPECTED-END");
        }
        other => panic!("unknown child role {other}"),
    }
}
