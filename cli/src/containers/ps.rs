//! `ps`: the containers of a node.

use super::*;

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Show all containers, not only running ones.
    #[arg(short = 'a', long)]
    pub(super) all: bool,
    /// Only ids.
    #[arg(short = 'q', long)]
    pub(super) quiet: bool,
    #[arg(long)]
    pub(super) json: bool,
}

fn status_text(
    status: berth_proto::messages::exec::ContainerStatus,
    exit_code: Option<i32>,
) -> String {
    use berth_proto::messages::exec::ContainerStatus as S;
    match (status, exit_code) {
        (S::Running, _) => "Up".to_string(),
        (S::Exited, Some(code)) => format!("Exited ({code})"),
        (other, _) => {
            let text = other.as_str();
            let mut chars = text.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

pub(super) async fn ps(
    args: PsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let list: ContainerList = target
        .call(
            ExecVerb::List,
            &ContainerListRequest { all: args.all },
            None,
        )
        .await
        .map_err(|err| match err.kind() {
            Some(ErrorKind::NotFound) => Failure::berth("no containers"),
            _ => failure(err),
        })?;
    if args.json {
        let text = serde_json::to_string_pretty(&list.containers)
            .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for c in &list.containers {
            println!("{}", &c.id[..c.id.len().min(12)]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<20}  {:<22}  {:<30}  {:<12}  NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for c in &list.containers {
        let mut command = c.command.join(" ");
        if command.chars().count() > 20 {
            command = command.chars().take(19).collect::<String>() + "…";
        }
        println!(
            "{:<12}  {:<20}  {:<22}  {:<30}  {:<12}  {}",
            &c.id[..c.id.len().min(12)],
            c.image,
            format!("\"{command}\""),
            c.created,
            status_text(c.status, c.exit_code),
            c.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
