//! `register`, `start`, `stop`, `restart`, `list`, `show`, `remove`, `config`.

use myagent_proto::v1 as pb;

use crate::args::{ConfigArgs, ConfigFlags, ListArgs, RegisterArgs, RestartArgs};
use crate::client::Clients;
use crate::error::{Error, Result};
use crate::output::{json, text, Rendered};

fn config_from(flags: &ConfigFlags) -> pb::ServiceConfig {
    pb::ServiceConfig {
        max_sessions: flags.max_sessions,
        session_timeout: flags.session_timeout,
        auto_restart: flags.no_auto_restart.then_some(false),
        health_check_enabled: flags.no_health_check.then_some(false),
        env: (!flags.env.is_empty()).then(|| pb::StringMap {
            entries: flags.env.iter().cloned().collect(),
        }),
        args: (!flags.args.is_empty()).then(|| pb::StringList {
            items: flags.args.clone(),
        }),
        working_dir: flags.working_dir.clone(),
        proxy_metadata: flags.no_proxy_metadata.then_some(false),
        weight: flags.weight,
        health_check_interval: flags.health_check_interval,
        ..Default::default()
    }
}

/// The register request; the agent path is made absolute against the caller's directory so the
/// control plane (which may run elsewhere) gets the file the user meant.
pub fn register_request(a: &RegisterArgs) -> Result<pb::RegisterServiceRequest> {
    let agent_factory_path = match &a.path {
        None => String::new(),
        Some(p) if p.is_absolute() => p.display().to_string(),
        Some(p) => std::env::current_dir()
            .map_err(|e| Error::Usage(format!("cannot resolve {}: {e}", p.display())))?
            .join(p)
            .display()
            .to_string(),
    };
    // Unset fields take the control plane's defaults.
    let config = config_from(&a.config);
    Ok(pb::RegisterServiceRequest {
        name: a.name.clone(),
        description: a.description.clone(),
        agent_factory_path,
        host: a.host.clone(),
        port: u32::from(a.port),
        tags: a
            .tags
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        config: Some(config),
        wait_for_sync: a.wait_for_sync,
    })
}

pub async fn register(c: &mut Clients, a: &RegisterArgs) -> Result<Rendered> {
    let req = register_request(a)?;
    let r = c
        .services
        .register_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::register(&r), text::register(&r)))
}

pub async fn start(c: &mut Clients, service: &str) -> Result<Rendered> {
    let req = pb::StartServiceRequest {
        service: service.into(),
        wait_for_sync: 0.0,
    };
    let r = c
        .services
        .start_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::lifecycle(&r), text::lifecycle(&r)))
}

pub async fn stop(c: &mut Clients, service: &str) -> Result<Rendered> {
    let req = pb::StopServiceRequest {
        service: service.into(),
        wait_for_sync: 0.0,
    };
    let r = c
        .services
        .stop_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::lifecycle(&r), text::lifecycle(&r)))
}

pub async fn restart(c: &mut Clients, a: &RestartArgs) -> Result<Rendered> {
    let req = pb::RestartServiceRequest {
        service: a.service.clone(),
        grace_seconds: a.grace_seconds,
        message: a.message.clone(),
        wait_for_sync: 0.0,
    };
    let r = c
        .services
        .restart_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::lifecycle(&r), text::lifecycle(&r)))
}

pub async fn list(c: &mut Clients, a: &ListArgs) -> Result<Rendered> {
    let req = pb::ListServicesRequest {
        tag: a.tag.clone().unwrap_or_default(),
        status: a.status.clone().unwrap_or_default(),
        limit: a.limit.unwrap_or(0),
        offset: a.offset,
    };
    let r = c
        .services
        .list_services(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::list(&r), text::list(&r)))
}

pub async fn show(c: &mut Clients, service: &str) -> Result<Rendered> {
    let req = pb::GetServiceRequest {
        service: service.into(),
    };
    let s = c
        .services
        .get_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::service(&s), text::service(&s)))
}

pub async fn remove(c: &mut Clients, service: &str) -> Result<Rendered> {
    let req = pb::DeleteServiceRequest {
        service: service.into(),
        wait_for_sync: 0.0,
    };
    let r = c
        .services
        .delete_service(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    let fallback = "Service deleted successfully";
    let message = if r.message.is_empty() {
        fallback
    } else {
        &r.message
    };
    Ok(Rendered::new(
        json::deleted(message, fallback),
        format!("{message} ({})\n", r.service_id),
    ))
}

pub async fn config(c: &mut Clients, a: &ConfigArgs) -> Result<Rendered> {
    let mut config = config_from(&a.config);
    if a.auto_restart {
        config.auto_restart = Some(true);
    }
    if a.health_check {
        config.health_check_enabled = Some(true);
    }
    let req = pb::UpdateServiceConfigRequest {
        service: a.service.clone(),
        config: Some(config),
        wait_for_sync: a.wait_for_sync,
    };
    let s = c
        .services
        .update_service_config(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::config_updated(&s), text::service(&s)))
}
