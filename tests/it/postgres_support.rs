//! A PostgreSQL database of a test's own on the machine's running server (this machine
//! kind runs PostgreSQL on 127.0.0.1:5432; `.ci/run` installs and starts it where it is
//! absent): created with a random name, dropped on drop.

use std::env;

use sqlx::{Connection, PgConnection};

/// Where the server is: a URL whose database the test may connect to, to create its own.
const SERVER_VAR: &str = "CITYPARK_TEST_POSTGRES";
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Set to "1" (CI does) to turn an unreachable server into a failure.
const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_POSTGRES";

/// A database of its own on the PostgreSQL server, dropped (with its connections) on
/// drop.
pub struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    /// Creates one, or returns None after printing why when the server is unreachable
    /// and `CITYPARK_REQUIRE_POSTGRES` is not "1" (then it panics instead).
    pub async fn create() -> Option<Self> {
        let admin = env::var(SERVER_VAR).unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(error) => {
                if env::var(REQUIRE_VAR).as_deref() == Ok("1") {
                    panic!("PostgreSQL at {admin} is unreachable and {REQUIRE_VAR}=1: {error}");
                }
                eprintln!(
                    "skipping: PostgreSQL at {admin} is unreachable ({error}); start one or set \
                     {SERVER_VAR}, or set {REQUIRE_VAR}=1 to fail instead"
                );
                return None;
            }
        };
        let name = format!("citypark_t{:016x}", rand_u64());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        Some(Self { admin, name })
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        match self.admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => format!("{}/{}", self.admin, self.name),
        }
    }

    /// A connection to the server's administrative database.
    pub async fn admin_connection(&self) -> PgConnection {
        PgConnection::connect(&self.admin).await.expect("connect")
    }

    /// Lets connections to the database in, or keeps them out and ends the open ones:
    /// the database as an application sees it going away and coming back.
    pub async fn allow_connections(&self, mut admin: PgConnection, allow: bool) {
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("alter the database");
        if !allow {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .expect("end its connections");
        }
        let _ = admin.close().await;
    }

    /// Runs one statement in the database (for tests that look underneath).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        let mut conn = PgConnection::connect(&self.url()).await.expect("connect");
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("a query");
        let _ = conn.close().await;
        n
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside a test's runtime: the database is dropped on a thread with a
        // runtime of its own, joined, so nothing is left behind.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
