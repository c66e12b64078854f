//! Typed clients over a few HTTP/2 connections, and the data every run starts with:
//! a vendor and a retailer in partnership, N customers of the vendor granted to the
//! retailer, and the vendor's webhook endpoint at the local receiver.

use std::sync::Arc;
use std::time::Instant;

use liaison::pb;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use liaison::google::longrunning::operations_client::OperationsClient;
use pb::account_mapping_service_client::AccountMappingServiceClient;
use pb::admin_service_client::AdminServiceClient;
use pb::customer_service_client::CustomerServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::interaction_service_client::InteractionServiceClient;
use pb::partnership_service_client::PartnershipServiceClient;
use pb::sharing_service_client::SharingServiceClient;
use pb::webhook_service_client::WebhookServiceClient;

/// HTTP/2 connections the load generator spreads its calls over.
pub const CONNECTIONS: usize = 4;

#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Connections to one server, handed out round-robin.
#[derive(Clone)]
pub struct Conns(Arc<Vec<Channel>>);

impl Conns {
    pub async fn open(addr: &str, n: usize) -> anyhow::Result<Self> {
        let mut channels = vec![];
        for _ in 0..n {
            channels.push(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        Ok(Conns(Arc::new(channels)))
    }

    pub fn channel(&self, i: usize) -> Channel {
        self.0[i % self.0.len()].clone()
    }

    fn authed(&self, i: usize, key: &str) -> Authed {
        let value = format!("Bearer {key}").parse().expect("ASCII key");
        InterceptedService::new(self.channel(i), Bearer(value))
    }

    pub fn admin(&self, i: usize, key: &str) -> AdminServiceClient<Authed> {
        AdminServiceClient::new(self.authed(i, key))
    }
    pub fn customers(&self, i: usize, key: &str) -> CustomerServiceClient<Authed> {
        CustomerServiceClient::new(self.authed(i, key))
    }
    pub fn interactions(&self, i: usize, key: &str) -> InteractionServiceClient<Authed> {
        InteractionServiceClient::new(self.authed(i, key))
    }
    pub fn sharing(&self, i: usize, key: &str) -> SharingServiceClient<Authed> {
        SharingServiceClient::new(self.authed(i, key))
    }
    pub fn mappings(&self, i: usize, key: &str) -> AccountMappingServiceClient<Authed> {
        AccountMappingServiceClient::new(self.authed(i, key))
    }
    pub fn operations(&self, i: usize, key: &str) -> OperationsClient<Authed> {
        OperationsClient::new(self.authed(i, key))
    }
    pub fn partnerships(&self, i: usize, key: &str) -> PartnershipServiceClient<Authed> {
        PartnershipServiceClient::new(self.authed(i, key))
    }
    pub fn webhooks(&self, i: usize, key: &str) -> WebhookServiceClient<Authed> {
        WebhookServiceClient::new(self.authed(i, key))
    }
    pub fn events(&self, i: usize, key: &str) -> EventServiceClient<Authed> {
        EventServiceClient::new(self.authed(i, key))
    }
}

/// An organization and its keys.
#[derive(Debug, Clone)]
pub struct Org {
    pub name: String,
    pub admin_key: String,
    pub read_key: String,
}

pub async fn create_org(conns: &Conns, operator: &str, slug: &str) -> anyhow::Result<Org> {
    let mut admin = conns.admin(0, operator);
    let org = admin
        .create_organization(pb::CreateOrganizationRequest {
            organization: Some(pb::Organization {
                slug: slug.into(),
                display_name: format!("{slug} Ltd"),
                kind: pb::OrganizationKind::Retailer as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let mut key = async |scope: pb::ApiKeyScope| {
        admin
            .create_api_key(pb::CreateApiKeyRequest {
                parent: org.name.clone(),
                api_key: Some(pb::ApiKey {
                    scopes: vec![scope as i32],
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner().key)
    };
    let admin_key = key(pb::ApiKeyScope::Admin).await?;
    let read_key = key(pb::ApiKeyScope::Read).await?;
    Ok(Org {
        name: org.name,
        admin_key,
        read_key,
    })
}

/// `a` proposes, `b` accepts.
pub async fn partner(conns: &Conns, a: &Org, b: &Org) -> anyhow::Result<()> {
    let proposed = conns
        .partnerships(0, &a.admin_key)
        .propose_partnership(pb::ProposePartnershipRequest {
            partnership: Some(pb::Partnership {
                recipient: b.name.clone(),
                relationship: pb::Relationship::Supplies as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    conns
        .partnerships(0, &b.admin_key)
        .accept_partnership(pb::AcceptPartnershipRequest {
            name: proposed.name,
            etag: String::new(),
            request_id: String::new(),
        })
        .await?;
    Ok(())
}

/// Grants `customer` to `grantee`, every field, read only.
pub async fn grant(
    conns: &Conns,
    i: usize,
    owner: &Org,
    customer: &str,
    grantee: &Org,
) -> Result<(), Status> {
    conns
        .sharing(i, &owner.admin_key)
        .create_grant(pb::CreateGrantRequest {
            parent: customer.into(),
            grant: Some(pb::Grant {
                grantee: grantee.name.clone(),
                level: pb::AccessLevel::Read as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|_| ())
}

/// A webhook endpoint of `org` at `url` for every event type; returns its name.
pub async fn endpoint(
    conns: &Conns,
    org: &Org,
    url: &str,
    enabled: bool,
) -> anyhow::Result<String> {
    Ok(conns
        .webhooks(0, &org.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: org.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: url.into(),
                enabled: Some(enabled),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .name)
}

/// Turns an endpoint on or off.
pub async fn set_enabled(
    conns: &Conns,
    org: &Org,
    name: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    conns
        .webhooks(0, &org.admin_key)
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            webhook_endpoint: Some(pb::WebhookEndpoint {
                name: name.into(),
                enabled: Some(enabled),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
            request_id: String::new(),
        })
        .await?;
    Ok(())
}

/// Deliveries of `name` not yet made.
pub async fn pending(conns: &Conns, org: &Org, name: &str) -> anyhow::Result<i64> {
    Ok(conns
        .webhooks(0, &org.admin_key)
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest { name: name.into() })
        .await?
        .into_inner()
        .pending_deliveries)
}

/// The newest sequence of the caller's feed.
pub async fn head(conns: &Conns, key: &str) -> anyhow::Result<i64> {
    Ok(conns
        .events(0, key)
        .list_events(pb::ListEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .head_sequence)
}

/// A seeded person: 1 in 100 is tagged `vip`.
pub fn person(prefix: &str, i: usize) -> pb::Customer {
    pb::Customer {
        kind: pb::CustomerKind::Person as i32,
        external_id: format!("{prefix}-{i}"),
        given_name: format!("Given{}", i % 5000),
        family_name: format!("Family{i}"),
        emails: vec![pb::EmailContact {
            address: format!("{prefix}{i}@example.com").to_lowercase(),
            label: String::new(),
            primary: true,
        }],
        phones: vec![pb::PhoneContact {
            number: format!("+1650253{:04}", i % 10_000),
            label: String::new(),
            primary: true,
        }],
        tags: if i.is_multiple_of(100) {
            vec!["vip".into()]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

/// What every scenario starts from.
pub struct Fixture {
    pub conns: Conns,
    pub operator: String,
    pub vendor: Org,
    pub retail: Org,
    /// The vendor's customers, in creation order; the first `granted` are granted to
    /// the retailer.
    pub customers: Vec<String>,
    pub granted: usize,
    /// The vendor's endpoint at the receiver, path `/hooks/vendor`.
    pub vendor_endpoint: String,
    pub seed_seconds: f64,
}

pub async fn seed(
    conns: Conns,
    operator: String,
    total: usize,
    grants: usize,
    receiver_url: &str,
) -> anyhow::Result<Fixture> {
    let start = Instant::now();
    let vendor = create_org(&conns, &operator, "vendor").await?;
    let retail = create_org(&conns, &operator, "retail").await?;
    partner(&conns, &vendor, &retail).await?;
    // Two batch writers, 1,000 customers a call.
    let mut tasks = vec![];
    for w in 0..2usize {
        let (conns, key) = (conns.clone(), vendor.admin_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = conns.customers(w, &key);
            let mut names = vec![];
            for batch in (w..total.div_ceil(1000)).step_by(2) {
                let customers = (batch * 1000..((batch + 1) * 1000).min(total))
                    .map(|i| person("S", i))
                    .collect();
                let created = client
                    .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                        customers,
                        request_id: String::new(),
                    })
                    .await?
                    .into_inner();
                names.push((
                    batch,
                    created
                        .customers
                        .into_iter()
                        .map(|c| c.name)
                        .collect::<Vec<_>>(),
                ));
            }
            Ok::<_, Status>(names)
        }));
    }
    let mut batches = vec![];
    for t in tasks {
        batches.extend(t.await??);
    }
    batches.sort_by_key(|(b, _)| *b);
    let customers: Vec<String> = batches.into_iter().flat_map(|(_, n)| n).collect();
    let granted = grants.min(customers.len());
    let names = Arc::new(customers.clone());
    let mut tasks = vec![];
    for w in 0..16usize {
        let (conns, names, vendor, retail) =
            (conns.clone(), names.clone(), vendor.clone(), retail.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..granted).step_by(16) {
                grant(&conns, w, &vendor, &names[i], &retail).await?;
            }
            Ok::<_, Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let vendor_endpoint =
        endpoint(&conns, &vendor, &format!("{receiver_url}/vendor"), true).await?;
    Ok(Fixture {
        conns,
        operator,
        vendor,
        retail,
        customers,
        granted,
        vendor_endpoint,
        seed_seconds: start.elapsed().as_secs_f64(),
    })
}
