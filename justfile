# The seed's recipe names, each a thin call of the real command (`just --list` shows them).
# Environment as in the seed: DRY_RUN=1 and DEPLOY_CONFIRM=yes are honoured by nxfarm build.

venv := justfile_directory() / ".venv/bin"
nxfarm := venv / "nxfarm"

# Encrypt a dotenv file for AGE_RECIPIENT (the stack's own SOPS files are written by `pulumi up`)
[no-cd]
nx-encrypt-config file="infra/nx-agents.env":
    @if [ -z "${AGE_RECIPIENT:-}" ]; then echo "nx-encrypt-config: AGE_RECIPIENT is not set: export AGE_RECIPIENT=age1... (the 'public key:' line of your age key file, or: age-keygen -y KEYFILE)" >&2; exit 2; fi
    {{venv}}/python -m nxfarm.sops sync "{{file}}.sops" --recipient "$AGE_RECIPIENT" < "{{file}}" > /dev/null

# Configure this Nx workspace for the farm (nx.json caching, .envrc); see `nxfarm init --help`
[no-cd]
nx-init *args:
    {{nxfarm}} init {{args}}

# The cache server on this machine (127.0.0.1:3333; prints a generated token on first start)
nx-cache-server-start *args:
    {{venv}}/python -m cache_server {{args}}

# Start (or restart) this machine's agent service, idempotently
nx-start-agent:
    {{nxfarm}} restart nx-farm-agent.service

# Build on the farm: DRY_RUN=1 prints the plan; DEPLOY_CONFIRM=yes skips the question
[no-cd]
nx-distributed-build *targets="build test lint":
    {{nxfarm}} build -t {{targets}}

# Tailnet devices that could be agents, with the pulumi config commands to add them
[no-cd]
nx-discover-agents *args:
    {{nxfarm}} discover {{args}}
