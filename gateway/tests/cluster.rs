//! Replicas sharing the pollers through leases in the CQL store (`[polling] coordination =
//! "cql"`), against the Apache Cassandra node `tests/run-all.sh` starts on 127.0.0.1:9042 and the
//! platform stand-ins of `tests/standins` (which enforce each platform's quota and record which
//! replica made each call, by its User-Agent).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inquiry_gateway::config::CqlConfig;
use inquiry_gateway::poll_leases::Leases;
use platform_standins::{etsy::Etsy, meta::Meta, tiktok::Tiktok, QuotaRule, Standin};
use support::{built_plugin, eventually, metric_value, metrics, unique, Gateway, HttpClient};

const CQL: &str = "127.0.0.1:9042";
/// Lease time: a round of renewals (lightweight transactions) must finish within a quarter of it,
/// and a Cassandra node sharing two cores with three gateways takes up to a second for one.
const LEASE_MS: u64 = 5000;
const PAGES: [&str; 4] = ["110044338450001", "110044338450002", "110044338450003", "110044338450004"];
const ETSY_SHOP: &str = "38291047";
const TIKTOK_SHOP: &str = "1001";
/// Base64 of 32 bytes: the key every replica seals token grants under.
const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

struct Platforms {
    meta: Standin,
    etsy: Standin,
    tiktok: Standin,
    oauth: Arc<std::sync::Mutex<platform_standins::etsy::OAuth>>,
}

impl Platforms {
    async fn start() -> Platforms {
        // Etsy access tokens live 4 s and every refresh retires the refresh token it used: a
        // replica that takes the lease over must go on with the grant its predecessor stored.
        let oauth = platform_standins::etsy::OAuth::new(Duration::from_secs(4), "0.etsy-refresh-first");
        Platforms {
            meta: Standin::start(Arc::new(Meta::default()), None).await.unwrap(),
            etsy: Standin::start(
                Arc::new(Etsy { oauth: Some(oauth.clone()), ..Etsy::default() }),
                Some(QuotaRule { per_second: 10.0, burst: 10, per_day: None }),
            )
            .await
            .unwrap(),
            tiktok: Standin::start(Arc::new(Tiktok::default()), None).await.unwrap(),
            oauth,
        }
    }

    /// Every (stand-in, account) polled: four Meta pages, one Etsy shop (its app is one lease
    /// group), one TikTok shop. Six lease groups.
    fn accounts(&self) -> Vec<(&Standin, &str)> {
        let mut accounts: Vec<(&Standin, &str)> = PAGES.iter().map(|p| (&self.meta, *p)).collect();
        accounts.push((&self.etsy, ETSY_SHOP));
        accounts.push((&self.tiktok, TIKTOK_SHOP));
        accounts
    }

    fn config(&self, keyspace: &str, replica: &str) -> String {
        let mut config = format!(
            "[polling]\ncoordination = \"cql\"\nreplica = \"{replica}\"\nlease_ms = {LEASE_MS}\n\
             [compliance]\nkek = \"{KEK}\"\n\
             [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"local_quorum\"\nlocation = \"eu\"\n{}",
            support::cql_login()
        );
        for page in PAGES {
            config.push_str(&format!(
                "[[pollers]]\nconnector = \"messenger_conversations\"\naccount = \"{page}\"\naccess_token = \"test-page-token\"\nbase_url = \"{}\"\ninterval_ms = 200\n",
                self.meta.url()
            ));
        }
        config.push_str(&format!(
            "[[pollers]]\nconnector = \"etsy_receipts\"\naccount = \"{ETSY_SHOP}\"\napp = \"etsy-app\"\naccess_token = \"\"\nrefresh_token = \"0.etsy-refresh-first\"\ntoken_url = \"{url}\"\napp_key = \"test-etsy-keystring\"\nbase_url = \"{url}\"\ninterval_ms = 200\nper_day = 2000000\n",
            url = self.etsy.url()
        ));
        config.push_str(&format!(
            "[[pollers]]\nconnector = \"tiktok_customer_service\"\naccount = \"{TIKTOK_SHOP}\"\naccess_token = \"test-tiktok-shop-token\"\napp_key = \"test-tiktok-app-key\"\napp_secret = \"test-tiktok-app-secret\"\nbase_url = \"{}\"\ninterval_ms = 200\n",
            self.tiktok.url()
        ));
        config
    }
}

async fn leases_held(gateway: &Gateway) -> f64 {
    metric_value(&metrics(gateway).await, "inquiry_gateway_poll_leases_held", &[])
}

/// Waits until each of `gateways` holds `expected[i]` leases; the time it took.
async fn wait_for_leases(gateways: &[&Gateway], expected: &[f64], timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut held = Vec::new();
        for gateway in gateways {
            held.push(leases_held(gateway).await);
        }
        if held == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "leases held {held:?}, expected {expected:?} within {timeout:?}\n{}",
            gateways[0].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct message ids stored in the CQL store, per account.
async fn stored_messages(keyspace: &str) -> BTreeMap<String, HashSet<String>> {
    let session = support::cql_session(CQL).await;
    let rows = session
        .query_unpaged(format!("SELECT account, message_id FROM {keyspace}.inquiries_by_id"), ())
        .await
        .map(|r| {
            r.into_rows_result().unwrap().rows::<(String, String)>().unwrap().map(Result::unwrap).collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut stored: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for (account, message) in rows {
        stored.entry(account).or_default().insert(message);
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_pollers_and_one_killed_hands_its_work_on_within_seconds() {
    let platforms = Platforms::start().await;
    let keyspace = unique("cluster");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap().keep()).collect();

    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        replicas.push(Gateway::start_in(dir.clone(), &platforms.config(&keyspace, &format!("gw-{i}"))).await);
    }
    // Six groups, three replicas: two each, whoever started first. The first start creates the
    // keyspace and its tables, which a fresh Cassandra node on two busy cores takes a minute or
    // more to agree on.
    wait_for_leases(&replicas.iter().collect::<Vec<_>>(), &[2.0, 2.0, 2.0], Duration::from_secs(180)).await;
    // Buyers keep writing from now on, through the kill and the return.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let standins: Vec<(Standin, String)> =
            platforms.accounts().into_iter().map(|(s, a)| (s.clone(), a.to_owned())).collect();
        tokio::spawn(async move {
            let mut conversation = 0;
            while writing.load(Ordering::SeqCst) {
                for (standin, account) in &standins {
                    // A new conversation each time: an Etsy receipt is its conversation.
                    standin.add_exchange(account, conversation, now());
                }
                conversation += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(5)).await;

    // SIGKILL one: no release; its leases expire and the two others take them over.
    replicas[0].kill9();
    let moved = wait_for_leases(&[&replicas[1], &replicas[2]], &[3.0, 3.0], Duration::from_secs(20)).await;
    assert!(moved < Duration::from_secs(10), "the work moved {moved:?} after the kill");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // It comes back (as a StatefulSet pod would, on its volume): the others hand it its share.
    replicas[0].restart().await;
    wait_for_leases(&replicas.iter().collect::<Vec<_>>(), &[2.0, 2.0, 2.0], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();

    // Nothing missed: every buyer message of every account reaches the CQL store.
    let expected: BTreeMap<String, usize> = platforms
        .accounts()
        .into_iter()
        .map(|(standin, account)| {
            (account.to_owned(), standin.mailbox().of_account(account).iter().filter(|m| !m.from_seller).count())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_messages(&keyspace).await;
        let counts: BTreeMap<String, usize> =
            expected.keys().map(|a| (a.clone(), stored.get(a).map_or(0, HashSet::len))).collect();
        if counts == expected {
            break;
        }
        assert!(Instant::now() < deadline, "stored {counts:?} of {expected:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // One replica at a time per quota key, never over the quota in total.
    let keys: Vec<_> = [&platforms.meta, &platforms.etsy, &platforms.tiktok]
        .into_iter()
        .flat_map(|standin| standin.stats().into_iter())
        .collect();
    assert_eq!(keys.len(), 6, "four pages, the Etsy app, the TikTok shop: {keys:?}");
    for (key, stats) in keys {
        assert_eq!(stats.violations, 0, "{key}: calls over the quota: {stats:?}");
        // Start-up shares out (at most two handovers), the kill (one), the restart (one): a
        // handful. Two replicas polling one key at once would alternate on every call.
        assert!(stats.handovers <= 6, "{key}: the key changed hands {} times: {stats:?}", stats.handovers);
        assert!(stats.served > 20, "{key}: {stats:?}");
    }

    // The rotated Etsy refresh token went from holder to holder with the lease.
    let refreshes = platforms.oauth.lock().unwrap().refreshes;
    assert!(refreshes >= 5, "tokens refreshed every ~2 s: {refreshes}");
    for gateway in &replicas {
        let failed = metric_value(
            &metrics(gateway).await,
            "inquiry_gateway_poll_token_refreshes_total",
            &[("outcome", "error")],
        );
        assert_eq!(failed, 0.0, "a replica refreshed with a spent token:\n{}", gateway.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_can_no_longer_move_the_cursor() {
    let keyspace = unique("leases");
    let cql = CqlConfig {
        contact_points: vec![CQL.to_owned()],
        keyspace: keyspace.clone(),
        location: Some(inquiry_connectors::Region::Eu),
        username: Some(support::CQL_USER.to_owned()),
        password: Some(support::CQL_PASSWORD.to_owned()),
        ..CqlConfig::default()
    };
    let session = inquiry_gateway::sinks::cql::connect(&cql).await.expect("cassandra is up");
    inquiry_gateway::sinks::cql::migrate(&session, &cql).await.unwrap();
    let group = || ["etsy_receipts/app:etsy-app".to_owned()];
    let lease = Duration::from_millis(1000);

    // A holds the group, then freezes (its keeper is gone without releasing anything).
    let a = Arc::new(Leases::new(&cql, "a", lease, group()));
    let (stop_a, stop_a_rx) = tokio::sync::watch::channel(());
    let keeper_a = tokio::spawn(a.clone().keep(stop_a_rx));
    let mut handle_a = a.handle("etsy_receipts/app:etsy-app");
    let (_never, mut never_rx) = tokio::sync::watch::channel(());
    let (epoch_a, polling_a) =
        tokio::time::timeout(Duration::from_secs(30), handle_a.acquire(&mut never_rx)).await.unwrap().unwrap();
    assert!(handle_a.save_cursor(epoch_a, ETSY_SHOP, "cursor-a").await.unwrap());
    keeper_a.abort();
    drop(stop_a);

    // B takes it once it expired, under a higher epoch, and reads A's cursor.
    let b = Arc::new(Leases::new(&cql, "b", lease, group()));
    let (_stop_b, stop_b_rx) = tokio::sync::watch::channel(());
    tokio::spawn(b.clone().keep(stop_b_rx));
    let mut handle_b = b.handle("etsy_receipts/app:etsy-app");
    let started = Instant::now();
    let (epoch_b, _polling_b) =
        tokio::time::timeout(Duration::from_secs(30), handle_b.acquire(&mut never_rx)).await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500), "B waited for A's lease to expire");
    assert!(epoch_b > epoch_a, "a new holder, a new epoch: {epoch_a} -> {epoch_b}");
    assert_eq!(handle_b.state_of(ETSY_SHOP).await.unwrap().0.as_deref(), Some("cursor-a"));

    // A wakes up: its cursor writes are fenced off; B's go through, and A may no longer call.
    assert!(!handle_a.save_cursor(epoch_a, ETSY_SHOP, "stale").await.unwrap(), "A's cursor write is refused");
    assert!(handle_b.save_cursor(epoch_b, ETSY_SHOP, "cursor-b").await.unwrap());
    assert_eq!(handle_b.state_of(ETSY_SHOP).await.unwrap().0.as_deref(), Some("cursor-b"));
    assert!(!handle_a.may_call(epoch_a), "A's hold ran out with its keeper");
    assert!(handle_b.may_call(epoch_b));

    // Token grants are fenced by the grant they replace: a rotated token is kept whoever holds
    // the lease, but never over a newer grant.
    assert!(handle_b.save_grant(ETSY_SHOP, b"grant-1", None).await.unwrap(), "first grant");
    assert!(!handle_a.save_grant(ETSY_SHOP, b"stale", None).await.unwrap(), "not over grant-1");
    assert!(handle_a.save_grant(ETSY_SHOP, b"grant-2", Some(b"grant-1")).await.unwrap(), "replaces grant-1");
    assert!(!handle_b.save_grant(ETSY_SHOP, b"grant-2b", Some(b"grant-1")).await.unwrap(), "grant-1 is gone");
    assert_eq!(handle_b.state_of(ETSY_SHOP).await.unwrap().1.as_deref(), Some(b"grant-2".as_slice()));
    drop(polling_a);
}

/// Posts a German inquiry of `shop-1` to `gateway` and returns the assignee its routing chose.
async fn assignee_on(gateway: &Gateway, external_id: &str) -> serde_json::Value {
    let client = HttpClient::new();
    let body = serde_json::json!({
        "channel": "generic", "account": "shop-1", "external_id": external_id, "conversation_id": external_id,
        "buyer": {"country": "DE"}, "body": "Hallo", "occurred_at": "2026-11-24T08:00:00Z",
    });
    let reply = client.post_json(&gateway.url("/v1/inquiries"), body.to_string()).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let decision = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["decision"].clone();
    assert!(decision["decided_by"].as_str().unwrap().starts_with("plugin:router@"), "{decision}");
    decision["assignee"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_update_on_one_replica_reaches_the_routing_plugins_of_every_replica() {
    let keyspace = unique("agents");
    // Generous plugin deadline: this file's other gateways and a Cassandra node share two cores, and a
    // timed-out batch takes the fallback route, which this test is not about.
    let config = format!(
        "[routing]\nagent_state = \"cql\"\nagent_refresh_ms = 200\n\
         [[routing.plugins]]\nid = \"router\"\npath = \"{}\"\ncapabilities = [\"agents\", \"kv\"]\n\
         [routing.plugins.limits]\nbatch_timeout_ms = 5000\n\
         [[routing.chains]]\naccount = \"shop-1\"\nplugins = [\"router\"]\n\
         [[routing.agents]]\nid = \"anna\"\nteam = \"eu-sales\"\ncapacity = 5\n\
         [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"local_quorum\"\nlocation = \"eu\"\n{}",
        built_plugin("example-c.wasm").display(),
        support::cql_login()
    );
    let a = Gateway::start_in(tempfile::tempdir().unwrap().keep(), &config).await;
    let b = Gateway::start_in(tempfile::tempdir().unwrap().keep(), &config).await;
    assert_eq!(assignee_on(&b, "before").await, "anna");

    // Anna goes offline through replica A: kept in the CQL store (once its schema is there: the
    // first start creates it), then seen by replica B's plugin within its refresh interval.
    let client = HttpClient::new();
    let put = |gateway: &Gateway, body: &'static str| {
        let (client, url) = (client.clone(), gateway.admin_url("/v1/agents/anna"));
        async move { client.request(hyper::Method::PUT, &url, body, &[("content-type", "application/json")]).await }
    };
    eventually(Duration::from_secs(180), "replica A keeps the update in the cql store", || async {
        put(&a, r#"{"online": false}"#).await.status.as_u16() == 200
    })
    .await;
    assert_eq!(assignee_on(&a, "a-1").await, serde_json::Value::Null, "A: at once");
    let mut n = 0;
    eventually(Duration::from_secs(10), "replica B sees anna offline", || {
        n += 1;
        let id = format!("b-{n}");
        let b = &b;
        async move { assignee_on(b, &id).await.is_null() }
    })
    .await;

    // And back, through replica B this time.
    assert_eq!(put(&b, r#"{"online": true}"#).await.status.as_u16(), 200);
    eventually(Duration::from_secs(10), "replica A sees anna online again", || {
        n += 1;
        let id = format!("a-{n}");
        let a = &a;
        async move { assignee_on(a, &id).await == "anna" }
    })
    .await;
}

/// Posts an inquiry of the buyer with `email` to `gateway`; its id.
async fn inquiry_of(gateway: &Gateway, external_id: &str, email: &str) -> String {
    let body = serde_json::json!({
        "channel": "generic", "account": "shop-1", "external_id": external_id, "conversation_id": external_id,
        "buyer": {"name": "Anna", "email": email, "country": "DE"}, "body": "Hallo", "occurred_at": "2026-11-24T08:00:00Z",
    });
    let reply = HttpClient::new().post_json(&gateway.url("/v1/inquiries"), body.to_string()).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_received_by_one_replica_is_carried_out_by_every_replica() {
    let keyspace = unique("subjects");
    let config = |replica: &str| {
        format!(
            "[store]\npseudonym_key = \"shared-pseudonym-key-of-the-test-cluster\"\n\
             [polling]\nreplica = \"{replica}\"\n\
             [compliance]\nrequest_sharing = \"cql\"\nrequest_refresh_ms = 200\n\
             [sinks.cql]\ncontact_points = [\"{CQL}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"local_quorum\"\nlocation = \"eu\"\n{}",
            support::cql_login()
        )
    };
    let a = Gateway::start_in(tempfile::tempdir().unwrap().keep(), &config("gateway-a")).await;
    let b = Gateway::start_in(tempfile::tempdir().unwrap().keep(), &config("gateway-b")).await;
    // Anna wrote to replica B only; Ben too, and he stays.
    let anna = inquiry_of(&b, "anna-1", "anna@example.com").await;
    let ben = inquiry_of(&b, "ben-1", "ben@example.com").await;

    // The erasure reaches replica A, which holds nothing of her: it is shared (once the schema is
    // there: the first start creates it) and answered `not_found` for A's own part.
    let client = HttpClient::new();
    let erase = r#"{"kind": "erasure", "subject": {"email": "Anna@Example.com"}}"#;
    let answer = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    eventually(Duration::from_secs(180), "replica A shares the erasure", || {
        let (client, url, answer) = (client.clone(), a.admin_url("/v1/subject-requests"), answer.clone());
        async move {
            let reply = client.post_json(&url, erase).await;
            *answer.lock().unwrap() = reply.json();
            reply.status.as_u16() == 200
        }
    })
    .await;
    let answer = answer.lock().unwrap().clone();
    let request = answer["request"].clone();
    assert_eq!(request["status"], "not_found", "{answer}");
    let id = request["id"].as_str().unwrap().to_owned();

    // Replica B carries it out within its refresh interval, under the same id and deadline.
    let personal = |gateway: &Gateway, inquiry: &str| {
        let (client, url) = (client.clone(), gateway.url(&format!("/v1/inquiries/{inquiry}")));
        async move { client.get(&url).await.json()["personal"].clone() }
    };
    eventually(Duration::from_secs(30), "replica B erased anna", || async { personal(&b, &anna).await.is_null() })
        .await;
    assert_eq!(personal(&b, &ben).await["email"], "ben@example.com", "ben is not erased");
    // Open while the sinks do their part (the CQL sink's deletes), then completed.
    let record_url = b.admin_url(&format!("/v1/subject-requests/{id}"));
    eventually(Duration::from_secs(30), "replica B completes the request", || async {
        client.get(&record_url).await.json()["status"] == "completed"
    })
    .await;
    let there = client.get(&record_url).await.json();
    assert_eq!(there["origin"], "gateway-a");
    assert_eq!(there["inquiries"], 1);
    assert_eq!((&there["due_at"], &there["received_at"]), (&request["due_at"], &request["received_at"]));
    let erased = support::audit_entries_of(&b, "subject.erased").await;
    assert_eq!(erased.len(), 1, "{erased:?}");
    assert_eq!(
        (erased[0]["detail"]["request_id"].as_str(), &erased[0]["detail"]["origin"]),
        (Some(id.as_str()), &"gateway-a".into())
    );

    // A writes to A now; an erasure through B reaches A, and B's own copy of it is not redone.
    let later = inquiry_of(&a, "anna-2", "anna@example.com").await;
    let reply = client.post_json(&b.admin_url("/v1/subject-requests"), erase).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["request"]["status"], "not_found", "anna is already erased on B");
    eventually(Duration::from_secs(30), "replica A erased anna", || async { personal(&a, &later).await.is_null() })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(support::audit_entries_of(&b, "subject.erased").await.len(), 1, "B carried out each request once");

    // A consent withdrawal through A reaches Ben's inquiries on B.
    let withdraw =
        r#"{"kind": "consent_withdrawal", "purposes": ["marketing"], "subject": {"email": "ben@example.com"}}"#;
    let reply = client.post_json(&a.admin_url("/v1/subject-requests"), withdraw).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["request"]["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "replica B recorded ben's withdrawal", || async {
        let there = client.get(&b.admin_url(&format!("/v1/subject-requests/{id}"))).await.json();
        there["status"] == "completed" && there["purposes"] == serde_json::json!(["marketing"])
    })
    .await;
    let withdrawn = support::audit_entries_of(&b, "consent.withdrawn").await;
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(withdrawn[0]["detail"]["origin"], "gateway-a");
}
