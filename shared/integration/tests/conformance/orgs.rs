//! Organizations: creation, reads, the listing and plan changes.

use std::sync::Arc;

use agentidp_core::domain::{Organization, Plan};
use agentidp_core::store::{Store, Write};
use uuid::Uuid;

use super::{assert_condition_failed, org};

pub async fn an_organization_reads_back_equal_and_appears_in_the_listing<S: Store + 'static>(
    store: Arc<S>,
) {
    let free = org(Plan::Free);
    let enterprise = org(Plan::Enterprise);
    store
        .commit(vec![
            Write::CreateOrg(free.clone()),
            Write::CreateOrg(enterprise.clone()),
        ])
        .await
        .unwrap();

    assert_eq!(
        store.get_org(free.org_id).await.unwrap(),
        Some(free.clone())
    );
    assert_eq!(
        store.get_org(enterprise.org_id).await.unwrap(),
        Some(enterprise.clone())
    );
    assert_eq!(store.get_org(Uuid::new_v4()).await.unwrap(), None);
    let listed = store.list_orgs().await.unwrap();
    assert!(listed.contains(&free) && listed.contains(&enterprise));
}

pub async fn an_organization_cannot_be_created_twice<S: Store + 'static>(store: Arc<S>) {
    let first = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(first.clone())])
        .await
        .unwrap();

    let again = Organization {
        name: "Impostor".into(),
        plan: Plan::Enterprise,
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![Write::CreateOrg(again)]).await, 0);
    assert_eq!(store.get_org(first.org_id).await.unwrap(), Some(first));
}

pub async fn a_plan_can_be_set_only_on_an_existing_organization<S: Store + 'static>(store: Arc<S>) {
    let missing = Uuid::new_v4();
    assert_condition_failed(
        &store
            .commit(vec![Write::SetPlan {
                org_id: missing,
                plan: Plan::Enterprise,
            }])
            .await,
        0,
    );
    assert_eq!(store.get_org(missing).await.unwrap(), None);

    let existing = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(existing.clone())])
        .await
        .unwrap();
    store
        .commit(vec![Write::SetPlan {
            org_id: existing.org_id,
            plan: Plan::Enterprise,
        }])
        .await
        .unwrap();
    let expected = Organization {
        plan: Plan::Enterprise,
        ..existing
    };
    assert_eq!(
        store.get_org(expected.org_id).await.unwrap(),
        Some(expected)
    );
}
