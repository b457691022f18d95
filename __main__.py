"""nx-farm: the Pulumi program. Validate the stack config, then declare the farm.

Nothing is registered before the whole config is valid: a bad stack stops here with one
line per problem.
"""

import os
from pathlib import Path

import pulumi
import pulumi_random as random
from pulumi_command import remote

from components.agent import NxAgent, NxAgentArgs
from components._wheels import WheelsMissing, wheel_set
from components.cache_host import CacheHost, CacheHostArgs
from components.wheelhouse import AGENT_LOCK, CACHE_LOCK, CACHE_S3_LOCK, ROLES
from components.farm_ca import CaMember, FarmCA, FarmCAArgs
from components.render.agent import env_lines, tls_values
from components.scheduler import FarmScheduler, FarmSchedulerArgs
from components.render.agent import env_file
from components.render.cache_host import (AGENT_BRANCH_GRANT, cache_url, orchestrator_cache_url, orchestrator_grant,
                                         s3_credentials_file)
from components.render.sops_config import agent_file
from components.sops_recipients import SopsRecipients, SopsRecipientsArgs
from components.render.tailnet_policy import PolicyError, build_policy, parse_hujson
from components.settings import PROJECT, ConfigInvalid, SshTarget, cache_places, load, secrets_required
from components.tailnet import TailnetPolicy, TailnetPolicyArgs

ROOT = Path(__file__).resolve().parent
WHEELS_DIR = Path(os.environ.get("NXFARM_WHEELS_DIR") or ROOT / "dist" / "wheels")  # cache/ and agent/ sets


def wheels_for_hosts(settings) -> dict[tuple[str, str], Path]:  # noqa: ANN001 - FarmSettings
    """(role, host's stack name) -> the wheel set that fits the host; every gap at once, one per line."""
    cache_locks = [CACHE_LOCK, *([CACHE_S3_LOCK] if settings.cache_host.storage is not None else [])]
    wanted = [*(("cache", host, f"{PROJECT}:{where}", cache_locks) for host, where in cache_places(settings)),
              ("agent", settings.cache_host, f"{PROJECT}:cacheHost", [AGENT_LOCK]),
              *(("agent", agent, f"{PROJECT}:agents[{i}]", [AGENT_LOCK]) for i, agent in enumerate(settings.agents))]
    found, problems = {}, []
    for role, target, where, locks in wanted:
        distribution = ROLES[role][1]
        try:
            found[(role, target.name)] = wheel_set(WHEELS_DIR / role, distribution, locks, target.python, target.arch,
                                                   where)
        except WheelsMissing as exc:
            problems.append(str(exc))
    if problems:
        raise WheelsMissing("\n".join(problems))
    return found

config = pulumi.Config(PROJECT)
try:
    settings = load(config)
    missing = [key for key in secrets_required(settings) if config.get_secret(key) is None]
    if missing:
        raise ConfigInvalid("\n".join(f"{PROJECT}:{key}: required with cacheHost.storage (S3): "
                                      f"`pulumi config set --secret {PROJECT}:{key} ...`" for key in missing))
    wheels = wheels_for_hosts(settings)
    policy_path = ROOT / settings.tailnet.base_policy_file
    try:
        base_policy_text = policy_path.read_text()
    except OSError as exc:
        raise PolicyError(f"{PROJECT}:tailnet.basePolicyFile: cannot read {policy_path}: {exc.strerror}") from None
    policy = build_policy(parse_hujson(base_policy_text, str(policy_path)), settings)
except (ConfigInvalid, WheelsMissing, PolicyError) as exc:
    raise pulumi.RunError(f"invalid stack config or missing build output:\n{exc}") from None

ssh_private_key = config.require_secret("sshPrivateKey")


def connection(target: SshTarget) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=target.host,
        port=target.ssh_port,
        user=target.ssh_user,
        private_key=ssh_private_key,
        host_key=target.host_key,  # pinned: the provider ignores host keys when this is unset
        dial_error_limit=3,
        per_dial_timeout=15,
    )


def cache_token(name: str) -> pulumi.Output[str]:
    """One random token per agent and orchestrator; bumping secretsGeneration replaces them all."""
    return random.RandomPassword(
        f"cache-token-{name}",
        length=43,
        special=False,
        keepers={"generation": str(settings.secrets_generation)},
    ).result


# Each agent has a trusted token (commits on protected branches) and a branch token (any other
# commit: every namespace but the trusted one); each orchestrator one token of its tier.
tokens = {agent.name: cache_token(agent.name) for agent in settings.agents}
tokens.update({f"{agent.name}-branch": cache_token(f"{agent.name}-branch") for agent in settings.agents})
tokens.update({o.name: cache_token(o.name) for o in settings.orchestrators})
grants = {f"{agent.name}-branch": AGENT_BRANCH_GRANT for agent in settings.agents}
grants.update({o.name: orchestrator_grant(o.name, o.tier) for o in settings.orchestrators})

tailnet = TailnetPolicy("tailnet", TailnetPolicyArgs(policy=policy,
                                                    overwrite_existing=settings.tailnet.overwrite_existing_policy))

# The store's credentials: from secret config, to each cache host as its tokens go (stdin of a
# secret command, a file only root and the service read); never in a command or the unit.
s3_credentials = None
if settings.cache_host.storage is not None:
    s3_credentials = pulumi.Output.secret(pulumi.Output.all(config.require_secret("s3AccessKeyId"),
                                                            config.require_secret("s3SecretAccessKey")).apply(
        lambda keys: s3_credentials_file(*keys)))

caches = {
    host.name: CacheHost(
        host.name,
        CacheHostArgs(
            settings=host,
            connection=connection(host),
            tokens=tokens,
            grants=grants,
            wheels_dir=wheels[("cache", host.name)],
            cache_tag=settings.tailnet.cache_tag,
            acl=tailnet.acl,
            where=f"{PROJECT}:{where}",
            s3_credentials=s3_credentials,
        ),
    )
    for host, (_, where) in zip(settings.cache_hosts, cache_places(settings))
}
cache = caches[settings.cache_host.name]  # the first: the scheduler runs beside it

url = cache_url(settings.cache_host)

# The Dask cluster's own CA: one certificate for the scheduler, each agent and each orchestrator.
SCHEDULER_MEMBER = "scheduler"
ca = FarmCA("farm-ca", FarmCAArgs(
    members={SCHEDULER_MEMBER: CaMember("scheduler", [settings.cache_host.listen_address]),
             **{agent.name: CaMember("agent", [agent.host]) for agent in settings.agents},
             **{f"orchestrator-{o.name}": CaMember("orchestrator", []) for o in settings.orchestrators}},
    generation=settings.secrets_generation,
))
scheduler_tls = ca.members[SCHEDULER_MEMBER]
farm_scheduler = FarmScheduler(
    f"{settings.cache_host.name}-scheduler",
    FarmSchedulerArgs(
        connection=connection(settings.cache_host),
        bind=settings.cache_host.listen_address,
        port=settings.tailnet.scheduler_port,
        tls_env=pulumi.Output.all(scheduler_tls.ca_pem, scheduler_tls.cert_pem, scheduler_tls.key_pem).apply(
            lambda pems: env_lines(tls_values(*pems))),
        wheels_dir=wheels[("agent", settings.cache_host.name)],
        cache_url=f"http://127.0.0.1:{settings.cache_host.port}",
        target=settings.cache_host,
        owner=settings.cache_host.name,
        after=cache.preflight,
    ),
)
scheduler = f"tls://{settings.cache_host.listen_address}:{settings.tailnet.scheduler_port}"


def agent_env(agent):  # noqa: ANN001, ANN201 - AgentSettings -> Output[str]
    member = ca.members[agent.name]
    agent_cache = cache_url(settings.cache_host_named(agent.cache_host))
    return pulumi.Output.all(tokens[agent.name], tokens[f"{agent.name}-branch"], member.ca_pem, member.cert_pem,
                             member.key_pem).apply(
        lambda values: env_file(cache_url=agent_cache, token=values[0], branch_token=values[1], scheduler_address=scheduler,
                                agent=agent, trust=settings.trust, tls=(values[2], values[3], values[4]))
    )


# The shared file holds what every agent needs and nothing that is one agent's own; removing an
# agent rotates its data key (nxfarm.sops sync), and that agent's token leaves with it.
plaintexts = {agent_file(settings, agent.name): agent_env(agent) for agent in settings.agents}
plaintexts[settings.sops.shared_file] = pulumi.Output.from_input(
    f"NX_SELF_HOSTED_REMOTE_CACHE_SERVER={url}\nNXFARM_SCHEDULER={scheduler}\n"
    f"NXFARM_SECRETS_GENERATION={settings.secrets_generation}\n"
)
encrypted = SopsRecipients("sops", SopsRecipientsArgs(settings=settings, plaintexts=plaintexts, repo_root=ROOT))

for index, agent in enumerate(settings.agents):
    NxAgent(
        agent.name,
        NxAgentArgs(
            settings=agent,
            connection=connection(agent),
            env_ciphertext=encrypted.ciphertexts[agent_file(settings, agent.name)],
            deploy_user=settings.deploy_user,
            agent_tag=settings.tailnet.agent_tag,
            acl=tailnet.acl,
            wheels_dir=wheels[("agent", agent.name)],
            cache_url=cache_url(settings.cache_host_named(agent.cache_host)),
            where=f"{PROJECT}:agents[{index}]",
        ),
    )

pulumi.export("cacheUrl", cache.url)
pulumi.export("cacheUrls", {name: host.url for name, host in caches.items()})
pulumi.export("schedulerAddress", farm_scheduler.address)
# What each orchestrator puts in NXFARM_TLS_CA / _CERT / _KEY (files or base64: values).
pulumi.export("orchestratorTls", pulumi.Output.secret({
    o.name: pulumi.Output.all(ca.members[f"orchestrator-{o.name}"].ca_pem, ca.members[f"orchestrator-{o.name}"].cert_pem,
                              ca.members[f"orchestrator-{o.name}"].key_pem).apply(
        lambda pems: {"ca": pems[0], "cert": pems[1], "key": pems[2]})
    for o in settings.orchestrators
}))
pulumi.export("orchestratorTokens", pulumi.Output.secret({o.name: tokens[o.name] for o in settings.orchestrators}))
# What each orchestrator puts in NX_SELF_HOSTED_REMOTE_CACHE_SERVER: a branch-tier one its namespace.
pulumi.export("orchestratorCacheUrls", {
    o.name: caches[settings.cache_host_named(o.cache_host).name].url.apply(lambda base, o=o: orchestrator_cache_url(base, o))
    for o in settings.orchestrators})
