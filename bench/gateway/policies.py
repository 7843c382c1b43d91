"""Writes 200 Cedar policies for the bench gateway's one resource (bench/gateway/run.sh, policy
phase): the permits the bench agent needs, plus per-tool, per-agent, argument and budget rules
for other tools and agents, as a real deployment's set for one MCP server would look."""
import sys

resource, out = sys.argv[1], sys.argv[2]
policies = [
    '@id("issue") permit(principal, action == Mandate::Action::"issue", resource);',
    '@id("mcp-session") permit(principal, action == Mandate::Action::"call", resource is Mandate::Resource);',
    '@id("add") permit(principal is Mandate::Agent, action == Mandate::Action::"call", '
    'resource == Mandate::Tool::"add") when { context.scopes.contains("tools:call") };',
    '@id("add-no-ddl") forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"add") '
    'when { context.arguments_lower like "*drop table*" };',
]
n = 0
while len(policies) < 200:
    kind = n % 4
    if kind == 0:
        policies.append(f'@id("tool-{n}") permit(principal is Mandate::Agent, action == Mandate::Action::"call", '
                        f'resource == Mandate::Tool::"tool_{n}") when {{ context.scopes.contains("tools:call") }};')
    elif kind == 1:
        policies.append(f'@id("agent-{n}") forbid(principal == Mandate::Agent::"spiffe://mandate.local/agent/other-{n}", '
                        f'action, resource in Mandate::Resource::"{resource}");')
    elif kind == 2:
        policies.append(f'@id("args-{n}") forbid(principal, action == Mandate::Action::"call", '
                        f'resource == Mandate::Tool::"tool_{n - 2}") when {{ context.argument_values.contains("secret-{n}") }};')
    else:
        policies.append(f'@id("budget-{n}") forbid(principal, action == Mandate::Action::"call", '
                        f'resource == Mandate::Tool::"tool_{n - 3}") when {{ context.tool_calls >= {100 + n} }};')
    n += 1
with open(out, "w") as f:
    f.write("\n".join(policies) + "\n")
