//! The HTTP/1.1 accept loop.
//!
//! Why not `axum::serve`: it hands connections to hyper-util's protocol-sniffing builder, whose
//! private wrapper type makes an upgraded connection impossible to take back as the `TcpStream` it
//! is. The console relay needs the bare socket (its two halves without a lock between them, moved
//! onto a thread of its own), so connections are served here with hyper's HTTP/1 server directly.
//! Browsers and API clients speak HTTP/1.1 to a plain-text endpoint anyway.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `app` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Each connection holds a receiver: a send asks them to finish, and `closed` resolves when the
    // last one has.
    let (stop, stopping) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(tcp, remote, app.clone(), stopping.clone()));
    }
    drop(listener);
    drop(stopping);
    stop.send_replace(());
    stop.closed().await;
    Ok(())
}

async fn connection(tcp: TcpStream, remote: SocketAddr, app: Router, mut stopping: watch::Receiver<()>) {
    // Consoles are interactive: small writes (a key, a cursor move) go out at once.
    let _ = tcp.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(remote));
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|never| match never {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut asked = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(%remote, error = %e, "connection ended");
                }
                break;
            }
            _ = stopping.changed(), if !asked => {
                asked = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish_then_returns() -> anyhow::Result<()> {
        // The handler says when it has the request: a shutdown before hyper has read a request
        // closes that connection (it is idle), so stopping on a timer would race the client.
        let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
        let app = Router::new().route(
            "/slow",
            axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let entered_tx = entered_tx.clone();
                async move {
                    let _ = entered_tx.send(()).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    peer.ip().to_string()
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async {
            let _ = stopped.await;
        }));
        let request = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
        tokio::time::timeout(Duration::from_secs(10), entered.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the handler never ran"))?;
        let _ = stop.send(());
        let response = request.await??;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await?, "127.0.0.1", "the peer address reaches handlers");
        tokio::time::timeout(Duration::from_secs(5), server).await???;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
        Ok(())
    }
}
