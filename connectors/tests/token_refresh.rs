//! Access-token refresh: each poller whose platform's tokens expire builds the refresh request its
//! platform documents and reads the token from the answer; an answer without one is an error.

use inquiry_connectors::poll::{self, PollCredentials, PollMethod, PollTarget};
use time::macros::datetime;
use time::OffsetDateTime;

const NOW: OffsetDateTime = datetime!(2026-12-03 08:00:00 UTC);

fn target() -> PollTarget<'static> {
    PollTarget {
        account: "1001",
        credentials: PollCredentials {
            access_token: "old-access",
            app_key: Some("test-app-key"),
            app_secret: Some("test-app-secret"),
        },
        now: NOW,
        wants_answers: false,
    }
}

#[test]
fn each_platform_refreshes_the_way_it_documents() {
    let etsy = poll::find("etsy_receipts").unwrap();
    let request = etsy.refresh_request(&target(), "rt-1").unwrap();
    assert_eq!((request.method, request.path_and_query.as_str()), (PollMethod::Post, "/v3/public/oauth/token"));
    assert_eq!(request.body, "grant_type=refresh_token&client_id=test-app-key&refresh_token=rt-1");
    assert_eq!(etsy.token_base_url(), Some("https://api.etsy.com"));
    let grant = etsy
        .parse_refresh(br#"{"access_token":"a-2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}"#, NOW)
        .unwrap();
    assert_eq!(
        (grant.access_token.as_str(), grant.expires_in_seconds, grant.refresh_token.as_deref()),
        ("a-2", Some(3600), Some("rt-2"))
    );

    let ebay = poll::find("ebay_member_messages").unwrap();
    let request = ebay.refresh_request(&target(), "v^1.1#r").unwrap();
    assert_eq!(request.path_and_query, "/identity/v1/oauth2/token");
    assert!(request
        .headers
        .contains(&("authorization".to_owned(), "Basic dGVzdC1hcHAta2V5OnRlc3QtYXBwLXNlY3JldA==".to_owned())));
    assert_eq!(request.body, "grant_type=refresh_token&refresh_token=v%5E1.1%23r");
    let grant = ebay
        .parse_refresh(br#"{"access_token":"v^1.1#i","expires_in":7200,"token_type":"User Access Token"}"#, NOW)
        .unwrap();
    assert_eq!(
        (grant.expires_in_seconds, grant.refresh_token),
        (Some(7200), None),
        "eBay does not rotate refresh tokens"
    );
    // The Post-Order poller holds the same eBay user token and refreshes it the same way.
    let post_order = poll::find("ebay_post_order_inquiries").unwrap();
    assert_eq!(post_order.refresh_request(&target(), "v^1.1#r").unwrap().body, request.body);
    assert!(post_order.parse_refresh(br#"{"access_token":"v^1.1#i","expires_in":7200}"#, NOW).is_ok());

    let shopee = poll::find("shopee_chat").unwrap();
    let request = shopee.refresh_request(&target(), "rt-s").unwrap();
    assert!(request
        .path_and_query
        .starts_with("/api/v2/auth/access_token/get?partner_id=test-app-key&timestamp=1796284800&sign="));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body, serde_json::json!({"refresh_token": "rt-s", "partner_id": "test-app-key", "shop_id": 1001}));
    let grant = shopee
        .parse_refresh(
            br#"{"error":"","message":"","access_token":"s-2","refresh_token":"rt-s2","expire_in":14400}"#,
            NOW,
        )
        .unwrap();
    assert_eq!((grant.expires_in_seconds, grant.refresh_token.as_deref()), (Some(14400), Some("rt-s2")));
    assert!(shopee.parse_refresh(br#"{"error":"error_auth","message":"invalid refresh_token"}"#, NOW).is_err());

    let tiktok = poll::find("tiktok_customer_service").unwrap();
    let request = tiktok.refresh_request(&target(), "rt-t").unwrap();
    assert_eq!(
        request.path_and_query,
        "/api/v2/token/refresh?app_key=test-app-key&app_secret=test-app-secret&refresh_token=rt-t&grant_type=refresh_token"
    );
    let expires = NOW.unix_timestamp() + 604_800;
    let answer = format!(
        r#"{{"code":0,"message":"success","data":{{"access_token":"t-2","access_token_expire_in":{expires},"refresh_token":"rt-t2"}}}}"#
    );
    let grant = tiktok.parse_refresh(answer.as_bytes(), NOW).unwrap();
    assert_eq!(grant.expires_in_seconds, Some(604_800), "TikTok's absolute expiry becomes a duration");

    assert!(
        poll::find("messenger_conversations").unwrap().refresh_request(&target(), "x").is_none(),
        "page tokens do not expire"
    );
}

#[test]
fn an_answer_without_a_token_is_an_error() {
    for poller in poll::REGISTRY {
        if poller.refresh_request(&target(), "rt").is_none() {
            continue;
        }
        for body in [&b"{}"[..], b"{\"access_token\":\"\"}", b"<html>", b""] {
            assert!(
                poller.parse_refresh(body, NOW).is_err(),
                "{} took {:?}",
                poller.name(),
                String::from_utf8_lossy(body)
            );
        }
    }
}
