//! The behaviour every backend must show: one suite of async checks that take a store
//! (and a key prefix of their own), run by each backend's tests (`tests/sqlite.rs`,
//! `tests/etcd.rs`).
//!
//! The checks panic on the first difference, naming it. Every wait is bounded
//! ([`WAIT`]) only so that a broken watch fails instead of hanging; nothing is timed.
//! Revisions are compared with each other, never with fixed numbers, so a check may run on a
//! store that has other keys; [`compaction`] compacts the whole store, so it runs last or
//! alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{Event, KeyValue, ListOptions, ListResult, Store, StoreError, WatchStream};

/// How long any one answer may take before a check gives up.
pub const WAIT: Duration = Duration::from_secs(30);

/// Every check, in an order that lets them share one store (compaction last).
pub async fn all(store: Arc<dyn Store>, prefix: &str) {
    crud(store.clone(), &format!("{prefix}crud/")).await;
    compare_and_swap(store.clone(), &format!("{prefix}cas/")).await;
    paging(store.clone(), &format!("{prefix}paging/")).await;
    prefix_isolation(store.clone(), &format!("{prefix}isolation/")).await;
    watch_from_every_revision(store.clone(), &format!("{prefix}watch/")).await;
    watch_during_writes(store.clone(), &format!("{prefix}live/")).await;
    slow_watcher(store.clone(), &format!("{prefix}slow/"), 300).await;
    list_and_watch_rebuild(store.clone(), &format!("{prefix}rebuild/")).await;
    compaction(store, &format!("{prefix}compaction/")).await;
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

fn kv(key: &str, value: &[u8], create_revision: i64, mod_revision: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    }
}

/// Reads `stream` until an event at revision `last`; checks revisions only increase.
pub async fn collect_until(stream: &mut WatchStream, last: i64) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    while events.last().is_none_or(|e| e.revision() < last) {
        let batch = within("watch", stream.next())
            .await
            .unwrap_or_else(|| panic!("watch ended before revision {last}"))
            .unwrap_or_else(|e| panic!("watch failed before revision {last}: {e:?}"));
        assert!(!batch.is_empty(), "watch delivered an empty batch");
        for event in batch {
            if let Some(prev) = events.last() {
                assert!(
                    event.revision() > prev.revision(),
                    "watch went from revision {} to {}",
                    prev.revision(),
                    event.revision()
                );
            }
            events.push(event);
        }
    }
    assert_eq!(
        events.last().map(Event::revision),
        Some(last),
        "watch passed revision {last}"
    );
    events
}

/// Every key under `prefix` at `revision` (0: now), read in pages of `page`.
pub async fn list_all(
    store: &dyn Store,
    prefix: &str,
    revision: i64,
    page: usize,
) -> (Vec<KeyValue>, i64) {
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut at = revision;
    loop {
        let last = kvs.last().map(|kv| kv.key.clone());
        let opts = ListOptions {
            prefix,
            start_after: last.as_deref(),
            revision: at,
            limit: page,
        };
        let result = within("list", store.list(opts)).await.expect("list");
        if at == 0 {
            at = result.revision;
        }
        assert_eq!(
            result.revision, at,
            "pages of one list at different revisions"
        );
        let more = result.more;
        kvs.extend(result.kvs);
        if !more {
            return (kvs, at);
        }
    }
}

async fn list(store: &dyn Store, prefix: &str, revision: i64, limit: usize) -> ListResult {
    let opts = ListOptions {
        prefix,
        start_after: None,
        revision,
        limit,
    };
    store
        .list(opts)
        .await
        .unwrap_or_else(|e| panic!("list {prefix} at {revision}: {e:?}"))
}

/// Applies watch events to a state, checking each event's `prev` against it.
fn apply(state: &mut BTreeMap<String, KeyValue>, events: &[Event]) {
    for event in events {
        match event {
            Event::Put { kv, prev } => {
                assert_eq!(
                    prev.as_ref(),
                    state.get(&kv.key),
                    "prev of the put at {}",
                    kv.mod_revision
                );
                if prev.is_none() {
                    assert_eq!(
                        kv.create_revision, kv.mod_revision,
                        "create at {}",
                        kv.mod_revision
                    );
                }
                state.insert(kv.key.clone(), kv.clone());
            }
            Event::Delete { revision, prev } => {
                assert_eq!(
                    state.remove(&prev.key).as_ref(),
                    Some(prev),
                    "delete at {revision}"
                );
            }
        }
    }
}

fn as_map(kvs: Vec<KeyValue>) -> BTreeMap<String, KeyValue> {
    kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect()
}

/// Create, get, update, delete, their errors and reads at past revisions.
pub async fn crud(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}a");
    assert_eq!(store.get(&key, 0).await.unwrap(), None);

    let r1 = store.create(&key, b"one".to_vec()).await.unwrap();
    assert_eq!(
        store.current_revision().await.unwrap(),
        r1,
        "revision of the store after a create"
    );
    let one = kv(&key, b"one", r1, r1);
    assert_eq!(store.get(&key, 0).await.unwrap(), Some(one.clone()));
    match store.create(&key, b"again".to_vec()).await {
        Err(StoreError::AlreadyExists(k)) => assert_eq!(k, key),
        other => panic!("second create: {other:?}"),
    }

    match store.update(&key, b"stale".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict { key: k, current }) => {
            assert_eq!(k, key);
            assert_eq!(current.as_deref(), Some(&one));
        }
        other => panic!("update with a stale revision: {other:?}"),
    }
    let r2 = store.update(&key, b"two".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    let two = kv(&key, b"two", r1, r2);
    assert_eq!(store.get(&key, 0).await.unwrap(), Some(two.clone()));
    assert_eq!(
        store.get(&key, r1).await.unwrap(),
        Some(one.clone()),
        "get at the old revision"
    );
    assert_eq!(store.current_revision().await.unwrap(), r2);

    match store.delete(&key, Some(r1)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current.as_deref(), Some(&two)),
        other => panic!("delete with a stale revision: {other:?}"),
    }
    let (r3, prev) = store.delete(&key, Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(prev, two);
    assert_eq!(store.current_revision().await.unwrap(), r3);
    assert_eq!(store.get(&key, 0).await.unwrap(), None);
    assert_eq!(store.get(&key, r2).await.unwrap(), Some(two.clone()));
    assert_eq!(store.get(&key, r3).await.unwrap(), None);

    match store.delete(&key, None).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, key),
        other => panic!("delete of a missing key: {other:?}"),
    }
    match store.delete(&key, Some(r2)).await {
        Err(StoreError::Conflict { current: None, .. }) => {}
        other => panic!("delete with a revision of a missing key: {other:?}"),
    }
    match store.update(&key, b"x".to_vec(), r2).await {
        Err(StoreError::Conflict { current: None, .. }) => {}
        other => panic!("update of a missing key: {other:?}"),
    }
    // An expected revision of 0 never matches (in etcd it would mean "missing").
    let missing = format!("{prefix}missing");
    match store.update(&missing, b"x".to_vec(), 0).await {
        Err(StoreError::Conflict { current: None, .. }) => {}
        other => panic!("update of a missing key at revision 0: {other:?}"),
    }
    assert_eq!(
        store.get(&missing, 0).await.unwrap(),
        None,
        "update at revision 0 created"
    );

    let r4 = store.create(&key, b"three".to_vec()).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(
        store.get(&key, 0).await.unwrap(),
        Some(kv(&key, b"three", r4, r4))
    );
    let (r5, prev) = store.delete(&key, None).await.unwrap();
    assert!(r5 > r4);
    assert_eq!(prev, kv(&key, b"three", r4, r4));

    // Values are bytes; empty ones are values too.
    let empty = format!("{prefix}empty");
    let r = store.create(&empty, Vec::new()).await.unwrap();
    assert_eq!(
        store.get(&empty, 0).await.unwrap(),
        Some(kv(&empty, b"", r, r))
    );
    let binary = format!("{prefix}binary");
    let bytes = vec![0, 255, 10, 13, 0];
    let r = store.create(&binary, bytes.clone()).await.unwrap();
    assert_eq!(
        store.get(&binary, 0).await.unwrap(),
        Some(kv(&binary, &bytes, r, r))
    );

    let current = store.current_revision().await.unwrap();
    match store.get(&key, current + 100).await {
        Err(StoreError::FutureRevision {
            requested,
            current: c,
        }) => {
            assert_eq!((requested, c), (current + 100, current));
        }
        other => panic!("get in the future: {other:?}"),
    }
    let opts = ListOptions {
        prefix,
        revision: current + 100,
        ..Default::default()
    };
    match store.list(opts).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("list in the future: {other:?}"),
    }
}

/// Compare-and-swap under concurrency: no update is lost, one create of a key wins.
pub async fn compare_and_swap(store: Arc<dyn Store>, prefix: &str) {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 20;
    let key = format!("{prefix}counter");
    let r0 = store.create(&key, b"0".to_vec()).await.unwrap();

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut known = kv(&key, b"0", r0, r0);
            let mut revisions = Vec::new();
            for _ in 0..INCREMENTS {
                loop {
                    let n: u64 = std::str::from_utf8(&known.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string().into_bytes();
                    match store.update(&key, next.clone(), known.mod_revision).await {
                        Ok(rev) => {
                            known.value = next;
                            known.mod_revision = rev;
                            revisions.push(rev);
                            break;
                        }
                        Err(StoreError::Conflict {
                            current: Some(current),
                            ..
                        }) => {
                            known = *current;
                        }
                        Err(e) => panic!("increment: {e:?}"),
                    }
                }
            }
            revisions
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(within("increments", task).await.unwrap());
    }
    let value = store.get(&key, 0).await.unwrap().unwrap();
    assert_eq!(
        value.value,
        (TASKS * INCREMENTS).to_string().into_bytes(),
        "lost updates"
    );
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        TASKS * INCREMENTS,
        "two updates got one revision"
    );
    assert_eq!(value.mod_revision, *revisions.last().unwrap());

    // Racing creates: exactly one wins, and its value is the key's.
    let race = format!("{prefix}race");
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, race) = (store.clone(), race.clone());
        tasks.push(tokio::spawn(async move {
            (i, store.create(&race, vec![i as u8]).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match within("creates", task).await.unwrap() {
            (i, Ok(rev)) => winners.push((i, rev)),
            (_, Err(StoreError::AlreadyExists(_))) => {}
            (_, Err(e)) => panic!("racing create: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "racing creates: {winners:?}");
    let (winner, rev) = winners[0];
    assert_eq!(
        store.get(&race, 0).await.unwrap(),
        Some(kv(&race, &[winner as u8], rev, rev))
    );

    // Racing deletes at one revision: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, race) = (store.clone(), race.clone());
        tasks.push(tokio::spawn(
            async move { store.delete(&race, Some(rev)).await },
        ));
    }
    let mut deleted = 0;
    for task in tasks {
        match within("deletes", task).await.unwrap() {
            Ok(_) => deleted += 1,
            Err(StoreError::Conflict { current: None, .. }) => {}
            Err(e) => panic!("racing delete: {e:?}"),
        }
    }
    assert_eq!(deleted, 1, "racing deletes");
}

/// Paging: limits, `more`, `remaining`, `start_after`, and pages pinned to one revision.
pub async fn paging(store: Arc<dyn Store>, prefix: &str) {
    // Byte order, not "natural" order: "10" < "9", "a" < "a/" < "aa" < "b" < "é".
    let names = [
        "1",
        "10",
        "9",
        "a",
        "a/",
        "a/b",
        "aa",
        "b",
        "é",
        "\u{10ffff}",
    ];
    let mut keys: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
    for i in 0..15 {
        keys.push(format!("{prefix}k{i:02}"));
    }
    for key in &keys {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    keys.sort();
    let total = keys.len();

    let everything = list(&*store, prefix, 0, 0).await;
    assert_eq!(
        everything
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        keys
    );
    assert!(!everything.more);
    assert_eq!(everything.remaining, 0);
    assert_eq!(everything.revision, store.current_revision().await.unwrap());
    for kv in &everything.kvs {
        assert_eq!(kv.value, kv.key.as_bytes());
    }
    let exact = list(&*store, prefix, 0, total).await;
    assert_eq!(
        (exact.kvs.len(), exact.more, exact.remaining),
        (total, false, 0),
        "limit = total"
    );

    let first = list(&*store, prefix, 0, 10).await;
    assert_eq!(first.kvs, everything.kvs[..10]);
    assert_eq!((first.more, first.remaining), (true, total as i64 - 10));

    // Changes after the first page do not show in the next ones.
    store
        .create(&format!("{prefix}0"), b"new".to_vec())
        .await
        .unwrap();
    store
        .create(&format!("{prefix}zz"), b"new".to_vec())
        .await
        .unwrap();
    store.delete(&keys[15], None).await.unwrap();

    let mut pages = first.kvs.clone();
    let mut last = first.kvs.last().unwrap().key.clone();
    let mut seen_remaining = vec![first.remaining];
    loop {
        let opts = ListOptions {
            prefix,
            start_after: Some(&last),
            revision: first.revision,
            limit: 10,
        };
        let page = store.list(opts).await.unwrap();
        assert_eq!(page.revision, first.revision);
        pages.extend(page.kvs.iter().cloned());
        seen_remaining.push(page.remaining);
        if !page.more {
            assert_eq!(page.remaining, 0);
            break;
        }
        last = page.kvs.last().unwrap().key.clone();
    }
    assert_eq!(pages, everything.kvs, "pages at the first page's revision");
    assert_eq!(
        seen_remaining,
        vec![total as i64 - 10, total as i64 - 20, 0]
    );

    // After the last key: nothing. Now: the changes.
    let opts = ListOptions {
        prefix,
        start_after: Some(&format!("{prefix}\u{10ffff}\u{10ffff}")),
        revision: 0,
        limit: 5,
    };
    let after = store.list(opts).await.unwrap();
    assert!(after.kvs.is_empty() && !after.more && after.remaining == 0);
    let now = list(&*store, prefix, 0, 0).await;
    assert_eq!(now.kvs.len(), total + 1);
    assert_eq!(now.kvs[0].key, format!("{prefix}0"));
    assert!(now.kvs.iter().any(|kv| kv.key == format!("{prefix}zz")));
    assert!(!now.kvs.iter().any(|kv| kv.key == keys[15]));
}

/// A prefix holds exactly the keys that start with it, in lists and watches.
pub async fn prefix_isolation(store: Arc<dyn Store>, prefix: &str) {
    let base = store.current_revision().await.unwrap();
    let names = ["a", "a/", "a/x", "a/x/y", "ab", "a0", "b/a", "A"];
    for name in names {
        store
            .create(&format!("{prefix}{name}"), name.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let last = store.current_revision().await.unwrap();
    let keys = |result: ListResult| -> Vec<String> {
        result
            .kvs
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_owned())
            .collect()
    };
    assert_eq!(
        keys(list(&*store, &format!("{prefix}a/"), 0, 0).await),
        ["a/", "a/x", "a/x/y"]
    );
    assert_eq!(
        keys(list(&*store, &format!("{prefix}a/x"), 0, 0).await),
        ["a/x", "a/x/y"]
    );
    assert_eq!(
        keys(list(&*store, &format!("{prefix}a"), 0, 0).await),
        ["a", "a/", "a/x", "a/x/y", "a0", "ab"]
    );
    assert_eq!(
        keys(list(&*store, &format!("{prefix}b"), 0, 0).await),
        ["b/a"]
    );
    assert!(list(&*store, &format!("{prefix}c"), 0, 0)
        .await
        .kvs
        .is_empty());
    let opts = ListOptions {
        prefix: &format!("{prefix}a/"),
        limit: 1,
        ..Default::default()
    };
    let page = store.list(opts).await.unwrap();
    assert_eq!((page.kvs.len(), page.more, page.remaining), (1, true, 2));

    let mut watch = store.watch(&format!("{prefix}a/"), base).await.unwrap();
    // Something after, under the prefix, to end the collection on.
    let end = store
        .create(&format!("{prefix}a/z"), Vec::new())
        .await
        .unwrap();
    let events = collect_until(&mut watch, end).await;
    let watched: Vec<&str> = events.iter().map(|e| &e.key()[prefix.len()..]).collect();
    assert_eq!(watched, ["a/", "a/x", "a/x/y", "a/z"]);
    assert!(events[0].revision() > base && events[2].revision() <= last);
}

/// A history under a prefix, with noise beside it; returns the events expected under
/// `{prefix}w/` in order.
async fn make_history(store: &dyn Store, prefix: &str, noise: &str) -> Vec<Event> {
    let mut state: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut events = Vec::new();
    let script: &[(&str, &str)] = &[
        ("create", "a"),
        ("noise", "1"),
        ("create", "b"),
        ("update", "a"),
        ("delete", "b"),
        ("noise", "2"),
        ("create", "b"),
        ("update", "a"),
        ("update", "b"),
        ("delete", "a"),
        ("create", "c"),
        ("noise", "3"),
        ("create", "a"),
        ("update", "c"),
        ("delete", "c"),
        ("update", "a"),
        ("create", "d/e"),
        ("update", "d/e"),
    ];
    for (i, (op, name)) in script.iter().enumerate() {
        let key = format!("{prefix}{name}");
        let value = format!("{name}@{i}").into_bytes();
        match *op {
            "noise" => {
                store
                    .create(&format!("{noise}{name}"), value)
                    .await
                    .unwrap();
            }
            "create" => {
                let rev = store.create(&key, value.clone()).await.unwrap();
                let new = kv(&key, &value, rev, rev);
                state.insert(key, new.clone());
                events.push(Event::Put {
                    kv: new,
                    prev: None,
                });
            }
            "update" => {
                let prev = state[&key].clone();
                let rev = store
                    .update(&key, value.clone(), prev.mod_revision)
                    .await
                    .unwrap();
                let new = kv(&key, &value, prev.create_revision, rev);
                state.insert(key, new.clone());
                events.push(Event::Put {
                    kv: new,
                    prev: Some(prev),
                });
            }
            "delete" => {
                let (rev, prev) = store.delete(&key, None).await.unwrap();
                assert_eq!(state.remove(&key).as_ref(), Some(&prev));
                events.push(Event::Delete {
                    revision: rev,
                    prev,
                });
            }
            _ => unreachable!(),
        }
    }
    events
}

/// A watch from every revision of a history delivers exactly the events after it, in
/// order, then the live ones (the replay-to-live handoff).
pub async fn watch_from_every_revision(store: Arc<dyn Store>, prefix: &str) {
    let watched = format!("{prefix}w/");
    let base = store.current_revision().await.unwrap();
    let history = make_history(&*store, &watched, &format!("{prefix}noise/")).await;
    let last = store.current_revision().await.unwrap();

    // Checked against a list too: the events rebuild the state.
    let mut state = BTreeMap::new();
    apply(&mut state, &history);
    assert_eq!(state, as_map(list(&*store, &watched, 0, 0).await.kvs));

    let mut watches = Vec::new();
    for after in base..=last {
        watches.push((after, store.watch(&watched, after).await.unwrap()));
    }
    // A watch past the current revision waits for it.
    watches.push((last + 1, store.watch(&watched, last + 1).await.unwrap()));

    let key = format!("{watched}live");
    let rev = store.create(&key, b"live".to_vec()).await.unwrap();
    let live = Event::Put {
        kv: kv(&key, b"live", rev, rev),
        prev: None,
    };
    let rev2 = store.update(&key, b"live2".to_vec(), rev).await.unwrap();
    let live2 = Event::Put {
        kv: kv(&key, b"live2", rev, rev2),
        prev: Some(kv(&key, b"live", rev, rev)),
    };
    for (after, mut watch) in watches {
        let got = collect_until(&mut watch, rev2).await;
        let mut expected: Vec<Event> = history
            .iter()
            .filter(|e| e.revision() > after)
            .cloned()
            .collect();
        if rev > after {
            expected.push(live.clone());
        }
        expected.push(live2.clone());
        assert_eq!(got, expected, "watch from revision {after}");
    }
}

/// Watches opened before, during and after concurrent writes all see every write, once, in
/// order.
pub async fn watch_during_writes(store: Arc<dyn Store>, prefix: &str) {
    const WRITERS: usize = 4;
    const KEYS: usize = 15;
    let base = store.current_revision().await.unwrap();
    let before = store.watch(prefix, base).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, prefix) = (store.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            for k in 0..KEYS {
                let key = format!("{prefix}{w}/{k}");
                let rev = store.create(&key, b"1".to_vec()).await.unwrap();
                let rev = store.update(&key, b"2".to_vec(), rev).await.unwrap();
                if k % 3 == 0 {
                    store.delete(&key, Some(rev)).await.unwrap();
                }
            }
        }));
    }
    let during = store.watch(prefix, base).await.unwrap();
    for task in tasks {
        within("writers", task).await.unwrap();
    }
    let after = store.watch(prefix, base).await.unwrap();
    let last = store.current_revision().await.unwrap();
    let writes = WRITERS * (KEYS * 2 + KEYS.div_ceil(3));

    let mut seen = Vec::new();
    for (name, mut watch) in [("before", before), ("during", during), ("after", after)] {
        let events = collect_until(&mut watch, last).await;
        assert_eq!(events.len(), writes, "watch opened {name} the writes");
        let mut state = BTreeMap::new();
        apply(&mut state, &events);
        seen.push(events);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let final_state = as_map(list(&*store, prefix, 0, 0).await.kvs);
    let mut state = BTreeMap::new();
    apply(&mut state, &seen[0]);
    assert_eq!(state, final_state);
}

/// A watch that is not read while many writes commit still gets every event after.
pub async fn slow_watcher(store: Arc<dyn Store>, prefix: &str, writes: usize) {
    let base = store.current_revision().await.unwrap();
    let mut watch = store.watch(prefix, base).await.unwrap();
    let mut expected = Vec::new();
    let key = format!("{prefix}k");
    let mut rev = store.create(&key, b"0".to_vec()).await.unwrap();
    let mut prev = kv(&key, b"0", rev, rev);
    expected.push(Event::Put {
        kv: prev.clone(),
        prev: None,
    });
    for i in 1..writes {
        let value = i.to_string().into_bytes();
        rev = store.update(&key, value.clone(), rev).await.unwrap();
        let new = kv(&key, &value, prev.create_revision, rev);
        expected.push(Event::Put {
            kv: new.clone(),
            prev: Some(prev),
        });
        prev = new;
    }
    assert_eq!(collect_until(&mut watch, rev).await, expected);
}

/// A list at any revision R plus a watch from R rebuilds the current state exactly.
pub async fn list_and_watch_rebuild(store: Arc<dyn Store>, prefix: &str) {
    let mut revisions = vec![store.current_revision().await.unwrap()];
    let mut live: BTreeMap<String, i64> = BTreeMap::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..150 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = format!("{prefix}{}", seed % 12);
        let value = format!("v{i}").into_bytes();
        let rev = match live.get(&key) {
            None => store.create(&key, value).await.unwrap(),
            Some(&at) if seed & 3 == 0 => store.delete(&key, Some(at)).await.unwrap().0,
            Some(&at) => store.update(&key, value, at).await.unwrap(),
        };
        if seed & 3 == 0 && live.contains_key(&key) {
            live.remove(&key);
        } else {
            live.insert(key, rev);
        }
        revisions.push(rev);
    }
    let last = *revisions.last().unwrap();
    let (now, at) = list_all(&*store, prefix, 0, 0).await;
    assert_eq!(at, last);
    let now = as_map(now);
    assert_eq!(
        now.iter()
            .map(|(k, v)| (k.clone(), v.mod_revision))
            .collect::<BTreeMap<_, _>>(),
        live
    );

    for (i, &revision) in revisions.iter().enumerate() {
        if i % 5 != 0 && revision != last {
            continue;
        }
        // Revision 0 of a new store: nothing (a list "at 0" reads now).
        let mut state = BTreeMap::new();
        if revision > 0 {
            let (kvs, at) = list_all(&*store, prefix, revision, 4).await;
            assert_eq!(at, revision);
            state = as_map(kvs);
        }
        if revision < last {
            let mut watch = store.watch(prefix, revision).await.unwrap();
            apply(&mut state, &collect_until(&mut watch, last).await);
        }
        assert_eq!(state, now, "list at {revision} plus watch from it");
    }
}

/// Compaction: reads and watches below the point fail with `Compacted`; the state at the
/// point and every event after it stay. Compacts the whole store.
pub async fn compaction(store: Arc<dyn Store>, prefix: &str) {
    let key = |n: &str| format!("{prefix}{n}");
    let ra = store.create(&key("a"), b"a1".to_vec()).await.unwrap();
    let rb = store.create(&key("b"), b"b1".to_vec()).await.unwrap();
    store.create(&key("c"), b"c1".to_vec()).await.unwrap();
    let ra = store.update(&key("a"), b"a2".to_vec(), ra).await.unwrap();
    store.delete(&key("b"), Some(rb)).await.unwrap();
    let rd = store.create(&key("d"), b"d1".to_vec()).await.unwrap();
    store.delete(&key("d"), Some(rd)).await.unwrap();
    let rd = store.create(&key("d"), b"d2".to_vec()).await.unwrap();
    let point = store.update(&key("a"), b"a3".to_vec(), ra).await.unwrap();
    let at_point = list(&*store, prefix, point, 0).await.kvs;
    let before_point = list(&*store, prefix, point - 1, 0).await.kvs;
    // After the point: changes to every kind of key.
    store
        .update(&key("a"), b"a4".to_vec(), point)
        .await
        .unwrap();
    store.create(&key("b"), b"b2".to_vec()).await.unwrap();
    store.delete(&key("c"), None).await.unwrap();
    let last = store.update(&key("d"), b"d3".to_vec(), rd).await.unwrap();
    let now = list(&*store, prefix, 0, 0).await.kvs;
    let mut watch = store.watch(prefix, point).await.unwrap();
    let after_point = collect_until(&mut watch, last).await;

    store.compact(point).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), point);

    let compacted = |result: Result<_, StoreError>, what: &str| match result {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!((requested, compacted), (point - 1, point), "{what}");
        }
        Err(e) => panic!("{what}: {e:?}"),
        Ok(_) => panic!("{what} below the compaction point worked"),
    };
    compacted(store.get(&key("a"), point - 1).await.map(|_| ()), "get");
    let opts = ListOptions {
        prefix,
        revision: point - 1,
        ..Default::default()
    };
    compacted(store.list(opts).await.map(|_| ()), "list");
    compacted(store.watch(prefix, point - 1).await.map(|_| ()), "watch");
    assert_ne!(before_point, at_point);

    assert_eq!(
        list(&*store, prefix, point, 0).await.kvs,
        at_point,
        "list at the point"
    );
    for kv in &at_point {
        assert_eq!(store.get(&kv.key, point).await.unwrap().as_ref(), Some(kv));
    }
    assert_eq!(
        store.get(&key("b"), point).await.unwrap(),
        None,
        "a key deleted before the point"
    );
    assert_eq!(list(&*store, prefix, 0, 0).await.kvs, now, "list now");
    let mut watch = store.watch(prefix, point).await.unwrap();
    assert_eq!(
        collect_until(&mut watch, last).await,
        after_point,
        "watch from the point"
    );

    // Compacting below the point is a no-op; past the current revision an error.
    store.compact(point - 1).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), point);
    let current = store.current_revision().await.unwrap();
    match store.compact(current + 10).await {
        Err(StoreError::FutureRevision { requested, .. }) => assert_eq!(requested, current + 10),
        other => panic!("compact in the future: {other:?}"),
    }

    // Compacting everything keeps the live keys, and the store goes on.
    store.compact(current).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), current);
    assert_eq!(
        list(&*store, prefix, 0, 0).await.kvs,
        now,
        "list after compacting everything"
    );
    assert_eq!(store.get(&key("c"), 0).await.unwrap(), None);
    let mut watch = store.watch(prefix, current).await.unwrap();
    let rev = store.create(&key("c"), b"c2".to_vec()).await.unwrap();
    let events = collect_until(&mut watch, rev).await;
    assert_eq!(
        events,
        [Event::Put {
            kv: kv(&key("c"), b"c2", rev, rev),
            prev: None
        }]
    );
    let a = now.iter().find(|kv| kv.key == key("a")).unwrap().clone();
    let rev = store
        .update(&a.key, b"a5".to_vec(), a.mod_revision)
        .await
        .unwrap();
    let events = collect_until(&mut watch, rev).await;
    let new = kv(&a.key, b"a5", a.create_revision, rev);
    assert_eq!(
        events,
        [Event::Put {
            kv: new,
            prev: Some(a)
        }]
    );
}
