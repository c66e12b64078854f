//! `liaison health`: one health check against a running hub.

use anyhow::Context;

use super::admin::explain;

/// One `grpc.health.v1.Health/Check`; an error unless the answer is SERVING.
pub(super) async fn health(
    server: &str,
    ca: Option<&std::path::Path>,
    service: String,
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (url, endpoint) = super::hub_endpoint(server)?;
    let mut endpoint = endpoint.timeout(std::time::Duration::from_secs(5));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .context("--ca")?;
    }
    let channel = super::connect_hub(&url, endpoint).await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(explain)?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        anyhow::bail!("the hub is not serving");
    }
    Ok(())
}
