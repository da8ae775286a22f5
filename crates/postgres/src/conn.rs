//! Connections: parsing the URL, connecting with a timeout, LISTEN connections, and the
//! reconnect backoff.
//!
//! Invariants:
//! 1. Every connection runs `SET search_path TO <schema>` before use, so every statement of the
//!    crate names tables unqualified and one database can hold many independent schemas.
//!    Every connection also runs `SET enable_seqscan = off`: a queue table's statistics are
//!    always stale (rows move between statuses faster than autovacuum samples them), so the
//!    planner would happily drive a fenced update from a sequential scan of `tasks` it believes
//!    holds one running row. Every statement of this crate has an index path; this makes the
//!    planner take it.
//! 2. Connecting never takes longer than the connect timeout (default 5 s): the driver's socket
//!    timeout is set and the whole handshake is also wrapped in a timer, so a black-holed host
//!    fails as fast as a refused one. Errors name `host:port`.
//! 3. NOTIFY channels are per schema (`<schema>_ready`, `<schema>_events`, `<schema>_cancel`).
//! 4. A broken connection is never repaired in place: callers drop it and connect anew through
//!    [`Backoff`] (exponential, 50 ms doubling to 5 s, with jitter).

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::error::{Error, Result};

/// Where and how to connect: URL, schema, timeouts.
#[derive(Clone)]
pub struct ConnectOptions {
    config: Config,
    url: String,
    schema: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// Parses a `postgres://user@host:port/db` URL (or a `key=value` string). The schema
    /// defaults to `nerv` and the connect timeout to 5 s.
    pub fn new(url: &str) -> Result<Self> {
        let redacted = redact(url);
        let mut config = Config::from_str(url).map_err(|e| Error::InvalidUrl {
            url: redacted.clone(),
            reason: crate::error::chain(&e),
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::InvalidUrl {
                url: redacted,
                reason: "no host given".into(),
            });
        }
        let connect_timeout = Duration::from_secs(5);
        config.connect_timeout(connect_timeout);
        config.application_name("nerv");
        // Notice a silently dead peer within about a minute instead of two hours.
        config.keepalives_idle(Duration::from_secs(15));
        Ok(ConnectOptions {
            config,
            url: redacted,
            schema: "nerv".into(),
            connect_timeout,
        })
    }

    /// Uses `schema` for every table (created by the migrations if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self.config.connect_timeout(t);
        self
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// `host:port` of the (first) server, for messages.
    pub fn host(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "(no host)".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    pub(crate) fn channel(&self, what: &str) -> String {
        format!("{}_{}", self.schema, what)
    }

    pub(crate) fn check_schema(&self) -> Result<()> {
        let s = &self.schema;
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidSchema(s.clone()))
        }
    }

    /// Wraps a driver error with the host and what was being done.
    pub(crate) fn db(
        &self,
        doing: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        move |source| Error::Db {
            host: self.host(),
            doing,
            source,
        }
    }

    /// Opens a plain connection (its driver future runs on a spawned task).
    pub(crate) async fn connect(&self) -> Result<Client> {
        let (client, conn) = self.handshake().await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("postgres connection closed: {e}");
            }
        });
        self.prepare(&client).await?;
        Ok(client)
    }

    /// Opens a connection that LISTENs on `channels`; notifications arrive as channel names on
    /// the returned receiver, which closes when the connection breaks.
    pub(crate) async fn listen(
        &self,
        channels: &[String],
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
        let (client, mut conn) = self.handshake().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.channel().to_string()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!("listen connection closed: {e}");
                        break;
                    }
                    None => break,
                }
            }
        });
        self.prepare(&client).await?;
        let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        client
            .batch_execute(&sql)
            .await
            .map_err(self.db("listening"))?;
        Ok((client, rx))
    }

    async fn handshake(
        &self,
    ) -> Result<(
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    )> {
        self.check_schema()?;
        let limit = self.connect_timeout + Duration::from_millis(500);
        match tokio::time::timeout(limit, self.config.connect(NoTls)).await {
            Err(_) => Err(Error::ConnectTimeout {
                host: self.host(),
                timeout: self.connect_timeout,
            }),
            Ok(Err(source)) => {
                if source.to_string().contains("timed out") {
                    Err(Error::ConnectTimeout {
                        host: self.host(),
                        timeout: self.connect_timeout,
                    })
                } else {
                    Err(Error::Connect {
                        host: self.host(),
                        reason: crate::error::chain(&source),
                        source,
                    })
                }
            }
            Ok(Ok(pair)) => Ok(pair),
        }
    }

    async fn prepare(&self, client: &Client) -> Result<()> {
        client
            .batch_execute(&format!(
                "SET search_path TO {}; SET enable_seqscan = off",
                self.schema
            ))
            .await
            .map_err(self.db("setting search_path"))
    }
}

/// Removes a password from a URL for messages.
fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

/// Exponential reconnect delay: 50 ms doubling to 5 s, with up to 25 % jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }

    /// The delay to wait now; the following one doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        let jitter = d.as_millis() as u64 / 4;
        d + Duration::from_millis(fastrand::u64(0..=jitter))
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn names_host_and_port() {
        let o = ConnectOptions::new("postgres://u@db.example:6000/x").unwrap();
        assert_eq!(o.host(), "db.example:6000");
    }

    #[test]
    fn rejects_bad_schema() {
        let o = ConnectOptions::new("postgres://u@h/x")
            .unwrap()
            .schema("Robert'); drop");
        assert!(matches!(o.check_schema(), Err(Error::InvalidSchema(_))));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50));
        for _ in 0..20 {
            b.next_delay();
        }
        assert!(b.next_delay() <= Duration::from_millis(6250));
    }
}
