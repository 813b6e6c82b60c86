//! The AWS backend's provisioning against moto_server: resources are found by name again even
//! when the account holds more user pools than one ListUserPools page (60).

use aws_config::BehaviorVersion;
use aws_sdk_cognitoidentityprovider::config::{Credentials, Region};
use paykey_local::provision;

#[tokio::test]
async fn a_second_start_finds_its_pool_behind_the_first_page_of_pools() {
    let Some(moto) = std::env::var("PAYKEY_MOTO_URL").ok().filter(|u| !u.is_empty()) else {
        assert_eq!(std::env::var("PAYKEY_SKIP_MOTO").as_deref(), Ok("1"), "PAYKEY_MOTO_URL is not set");
        return;
    };
    let http = paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .endpoint_url(moto)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await;
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&config);
    let run = uuid::Uuid::new_v4().simple().to_string();
    // 61 other pools first, so this stack's pool is created after them
    for i in 0..61 {
        idp.create_user_pool().pool_name(format!("other-{}-{i}", &run[..8])).send().await.unwrap();
    }
    let prefix = format!("paykey-paging-{}", &run[..8]);
    let catalog = paykey::domain::Catalog::parse(paykey_local::LOCAL_CATALOG).unwrap();
    let first = provision::resources(&config, &prefix, &catalog, true).await.unwrap();
    let pools = idp.list_user_pools().max_results(60).send().await.unwrap();
    assert!(
        pools.user_pools().iter().all(|p| p.id() != Some(first.user_pool_id.as_str())),
        "the test needs the pool beyond the first page"
    );
    let again = provision::resources(&config, &prefix, &catalog, false).await.unwrap();
    assert_eq!(again.user_pool_id, first.user_pool_id);
    assert_eq!(again.client_id, first.client_id);
}
