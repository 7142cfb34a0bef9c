//! The agents function: a thin binary over the shared handlers. `main` only initialises; the
//! handler borrows what it built for every event of this warm instance.

use agentidp_lambda::FunctionGroup;
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    agentidp_lambda::telemetry::init(true);
    let idp = agentidp_lambda::idp_from_env(FunctionGroup::Agents).await?;
    run(service_fn(|request| {
        agentidp_lambda::handle(&idp, FunctionGroup::Agents, request)
    }))
    .await
}
