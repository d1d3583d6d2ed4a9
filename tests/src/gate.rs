//! A TCP forwarder that can stop moving bytes while it keeps every socket open: to the side
//! that connects through it, the other end hangs (its host gone, no FIN or RST).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct TcpGate {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl TcpGate {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let addr = listener.local_addr().expect("gate address");
        let (open, open_rx) = watch::channel(true);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                pipes.spawn(pipe(cr, sw, open_rx.clone()));
                pipes.spawn(pipe(sr, cw, open_rx.clone()));
            }
        });
        TcpGate {
            addr,
            open,
            _tasks: tasks,
        }
    }

    /// Stops forwarding in both directions; bytes already read are held back.
    pub fn pause(&self) {
        self.open.send_replace(false);
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|o| *o).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
