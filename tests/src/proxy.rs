//! A TCP proxy on loopback that a test can cut (every connection closed, new ones refused)
//! and restore on the same port: a dependency outage without stopping the shared service.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    target: u16,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<new port> to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Proxy> {
        let mut proxy = Proxy {
            port: crate::free_port(),
            target,
            running: None,
        };
        proxy.restore().await?;
        Ok(proxy)
    }

    /// Starts forwarding again on the same port.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "the proxy is already forwarding");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (stop, stopped) = watch::channel(false);
        let stopped = Arc::new(stopped);
        let target = self.target;
        let task = tokio::spawn(async move {
            loop {
                let mut watcher = (*stopped).clone();
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let mut watcher = (*stopped).clone();
                        tokio::spawn(async move {
                            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                            let (mut client, mut server) = (client, server);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = watcher.wait_for(|stop| *stop) => {}
                            }
                        });
                    }
                    _ = watcher.wait_for(|stop| *stop) => break,
                }
            }
        });
        self.running = Some((stop, task));
        Ok(())
    }

    /// Closes every forwarded connection and stops listening.
    pub async fn cut(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(true);
            let _ = task.await;
            // Give the per-connection tasks a moment to drop their sockets.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
