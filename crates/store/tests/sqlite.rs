//! The SQLite backend: the conformance suite, reopening, compaction in the background,
//! and crash safety (a writer child killed with SIGKILL mid-stream).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use store::conformance::{self, collect_until};
use store::{SqliteConfig, SqliteStore, Store, StoreError};
use tempfile::TempDir;

fn store_in(dir: &TempDir, config: SqliteConfig) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open_with(&dir.path().join("state.db"), config).unwrap())
}

fn fresh() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir, SqliteConfig::default());
    (dir, store)
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = fresh();
            conformance::$name(store, "/registry/test/").await;
        }
    )*};
}

conformance_tests!(
    crud,
    compare_and_swap,
    paging,
    prefix_isolation,
    watch_from_every_revision,
    watch_during_writes,
    list_and_watch_rebuild,
    compaction,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher() {
    let (_dir, store) = fresh();
    // More groups than the broadcast buffers: the watcher lags and refills from the database.
    conformance::slow_watcher(store, "/s/", SqliteConfig::default().watch_buffer + 200).await;
}

/// The whole suite on one store whose broadcast holds 2 groups: watches lag all the time
/// and must refill from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_with_tiny_watch_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(
        &dir,
        SqliteConfig {
            watch_buffer: 2,
            ..SqliteConfig::default()
        },
    );
    conformance::all(store, "/tiny/").await;
}

/// The whole suite with one-request groups and one read connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_without_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig {
        max_group: 1,
        read_connections: 1,
        ..SqliteConfig::default()
    };
    conformance::all(store_in(&dir, config), "/single/").await;
}

/// A replay longer than one page of history, of writes committed in groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_replay() {
    let (_dir, store) = fresh();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                store
                    .create(&format!("/long/{t}/{i}"), vec![t, i])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, 32 * 40, "revisions count the writes from 1");
    let mut watch = store.watch("/long/", 0).await.unwrap();
    let events = collect_until(&mut watch, last).await;
    let revisions: Vec<i64> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(revisions, (1..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (state, current) = {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.current_revision().await.unwrap(), 0, "an empty store");
        match SqliteStore::open(&path) {
            Err(StoreError::Backend(e)) => assert!(e.to_string().contains("in use"), "{e}"),
            Err(e) => panic!("second open: {e:?}"),
            Ok(_) => panic!("a second open of one database worked"),
        }
        let r = store.create("/a", b"1".to_vec()).await.unwrap();
        assert_eq!(r, 1, "the first write is revision 1");
        store.update("/a", b"2".to_vec(), r).await.unwrap();
        store.create("/b", b"1".to_vec()).await.unwrap();
        store.delete("/b", None).await.unwrap();
        store.compact(3).await.unwrap();
        let list = store
            .list(store::ListOptions {
                prefix: "/",
                ..Default::default()
            })
            .await;
        (list.unwrap().kvs, store.current_revision().await.unwrap())
    };
    assert_eq!(current, 4);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), current);
    assert_eq!(store.compacted_revision().await.unwrap(), 3);
    let list = store
        .list(store::ListOptions {
            prefix: "/",
            ..Default::default()
        })
        .await;
    assert_eq!(list.unwrap().kvs, state);
    // Compacting to the last write (a tombstone) must not give its revision again.
    store.compact(4).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.create("/c", Vec::new()).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction() {
    let (_dir, store) = fresh();
    let sqlite_store = store.clone();
    let task = store::spawn_compactor(&sqlite_store, Duration::from_millis(20), 10);
    let mut rev = store.create("/c", b"0".to_vec()).await.unwrap();
    for i in 1..50 {
        rev = store
            .update("/c", i.to_string().into_bytes(), rev)
            .await
            .unwrap();
    }
    // Bounded wait for the compactor's rounds (not a timing assertion).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let compacted = store.compacted_revision().await.unwrap();
        if compacted > 0 {
            assert!(
                compacted <= rev - 10,
                "kept fewer than 10 revisions: {compacted}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the compactor never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sqlite_store);
    drop(store);
    // The task holds the store weakly and ends with it.
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_by_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(None, dir.path()).await.unwrap();
    store.create("/x", b"1".to_vec()).await.unwrap();
    assert!(dir.path().join("db/state.db").exists());
    drop(store);
    let store = store::open(Some("sqlite://other.db"), dir.path())
        .await
        .unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert!(dir.path().join("other.db").exists());
    let e = store::open(Some("mongodb://db:27017"), dir.path())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("mongodb://db:27017"), "{e}");
}

/// The watch stream of a dropped store ends with an error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_when_the_store_closes() {
    let (_dir, store) = fresh();
    let mut watch = store.watch("/", 0).await.unwrap();
    let rev = store.create("/a", Vec::new()).await.unwrap();
    collect_until(&mut watch, rev).await;
    drop(store);
    let end = tokio::time::timeout(conformance::WAIT, watch.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Err(StoreError::Backend(_)))), "{end:?}");
}

const CRASH_DIR: &str = "BERTH_STORE_CRASH_DIR";
const WRITERS: usize = 8;

/// The child of `crash_safety` (it does nothing unless started by it): 8 writers stream
/// creates and updates and print each acknowledged one as `ACK REVISION KEY VALUE`.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = SqliteStore::open(&Path::new(&dir).join("state.db")).unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let ack = |rev: i64, key: &str, value: &str| {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {rev} {key} {value}").unwrap();
                    out.flush().unwrap();
                };
                let mut last: Option<(String, i64)> = None;
                for i in 0.. {
                    let key = format!("/crash/{w}/{i:08}");
                    let value = format!("{key}=c{i}");
                    let rev = store
                        .create(&key, value.clone().into_bytes())
                        .await
                        .unwrap();
                    ack(rev, &key, &value);
                    // Each step also updates the key of the step before.
                    if let Some((key, rev)) = last.take() {
                        let value = format!("{key}=u{i}");
                        let rev = store.update(&key, value.clone().into_bytes(), rev).await;
                        ack(rev.unwrap(), &key, &value);
                    }
                    last = Some((key, rev));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Acknowledged writes survive a SIGKILL of the writing process, and nothing is torn.
#[test]
fn crash_safety() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // key -> (revision, value) of its last acknowledged write
    let mut acked: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut acks = 0;
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(ack) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut fields = ack.split(' ');
        let (rev, key, value) = (fields.next(), fields.next(), fields.next());
        let rev: i64 = rev.unwrap().parse().unwrap();
        let (key, value) = (key.unwrap().to_owned(), value.unwrap().to_owned());
        let entry = acked.entry(key).or_insert((0, String::new()));
        if rev > entry.0 {
            *entry = (rev, value);
        }
        acks += 1;
        if acks == 2000 && !killed {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
        // Lines read after the kill were acknowledged before it: they count too.
    }
    let status = child.wait().unwrap();
    assert!(
        killed,
        "the writer stopped after {acks} acknowledgements ({status})"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let current = store.current_revision().await.unwrap();
        for (key, (rev, value)) in &acked {
            let kv = store.get(key, 0).await.unwrap();
            let kv = kv.unwrap_or_else(|| panic!("acknowledged {key} at {rev} is gone"));
            // A later write may have committed without its acknowledgement printed.
            assert!(
                kv.mod_revision >= *rev,
                "{key}: acknowledged {rev}, found {kv:?}"
            );
            if kv.mod_revision == *rev {
                assert_eq!(kv.value, value.as_bytes(), "{key} at {rev}");
            }
        }
        // The whole history: revisions 1..=current, each once, each row whole.
        let mut watch = store.watch("/", 0).await.unwrap();
        let events = collect_until(&mut watch, current).await;
        let revisions: Vec<i64> = events.iter().map(|e| e.revision()).collect();
        assert_eq!(
            revisions,
            (1..=current).collect::<Vec<_>>(),
            "revisions not contiguous"
        );
        for event in &events {
            let store::Event::Put { kv, .. } = event else {
                panic!("a delete: {event:?}")
            };
            let value = std::str::from_utf8(&kv.value).unwrap();
            let (key, suffix) = value.split_once('=').unwrap();
            assert_eq!(key, kv.key, "torn row at {}", kv.mod_revision);
            assert!(
                suffix.len() > 1 && suffix[1..].parse::<u64>().is_ok(),
                "torn value {value}"
            );
        }
        let rev = store.create("/after-crash", b"ok".to_vec()).await.unwrap();
        assert_eq!(rev, current + 1);
        assert!(acks >= 2000 && acked.len() > 1000);
    });
}

/// Compaction removes the superseded rows themselves, not only their visibility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_deletes_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let mut rev = store.create("/k", b"0".to_vec()).await.unwrap();
    for i in 1..100 {
        rev = store
            .update("/k", i.to_string().into_bytes(), rev)
            .await
            .unwrap();
    }
    let gone = store.create("/gone", b"x".to_vec()).await.unwrap();
    let (last, _) = store.delete("/gone", Some(gone)).await.unwrap();
    let rows = |p: &Path| -> i64 {
        let c = rusqlite::Connection::open(p).unwrap();
        c.query_row("SELECT COUNT(*) FROM kine", [], |r| r.get(0))
            .unwrap()
    };
    assert!(rows(&path) >= 102);
    store.compact(last).await.unwrap();
    assert!(
        rows(&path) <= 2,
        "superseded rows and tombstones remain: {}",
        rows(&path)
    );
    let kv = store.get("/k", 0).await.unwrap().unwrap();
    assert_eq!(kv.value, b"99");
    assert!(matches!(
        store.get("/k", rev - 1).await,
        Err(StoreError::Compacted { .. })
    ));
}
