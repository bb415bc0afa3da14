from __future__ import annotations

import pytest

from guard_mcp._config import HttpUpstream, StdioUpstream, load_config, parse_duration
from guard_mcp._errors import ConfigError
from guard_mcp._models import ActionSchema, ActionTraits, BlastRadius, Category, Reversibility, Sensitivity


def test_stdio_and_http_upstreams_with_action_schemas() -> None:
    cfg = load_config(
        text="""
guard: {environment: production, approvals: {wait: 30s, expire: 2h}}
upstreams:
  shop:
    command: python
    args: [-m, shop]
    env: {KEY: "${SHOP_KEY}"}
    tools:
      refund: {action: refund.create, category: financial, resource: customer_id,
               constraints: {amount: {maximum: 10000}}}
  remote:
    url: https://mcp.example.com/mcp
    headers: {Authorization: "Bearer ${TOKEN:-none}"}
""",
        environ={"SHOP_KEY": "s3cret"},
    )
    shop, remote = cfg.upstreams["shop"], cfg.upstreams["remote"]
    assert isinstance(shop, StdioUpstream) and shop.env == {"KEY": "s3cret"}
    assert isinstance(remote, HttpUpstream) and remote.headers["Authorization"] == "Bearer none"
    assert cfg.guard.approvals.expire == 7200 and cfg.guard.approvals.wait == 30
    schema = cfg.action_schema("shop", "refund")
    assert schema.action == "refund.create" and schema.category is Category.FINANCIAL
    assert schema.constraints == {"amount": {"maximum": 10000}}


def test_every_trait_a_tool_entry_declares_reaches_its_action_schema() -> None:
    # ToolConfig is ActionSchema's traits as written in the YAML: each one, set away from its default,
    # arrives in the schema the pipeline uses; what only the guard sets (`declared`) cannot be written.
    cfg = load_config(
        text="""
upstreams:
  shop:
    command: x
    tools:
      refund: {category: financial, reversibility: partial, blast_radius: single, sensitivity: public,
               resource: customer_id, constraints: {amount: {maximum: 10}}, redact: [card],
               headline: "Refund {amount} to {customer_id}"}
"""
    )
    schema = cfg.action_schema("shop", "refund")
    carried = {name: getattr(schema, name) for name in ActionTraits.model_fields}
    assert carried == {
        "category": Category.FINANCIAL,
        "reversibility": Reversibility.PARTIAL,
        "blast_radius": BlastRadius.SINGLE,
        "sensitivity": Sensitivity.PUBLIC,
        "resource": "customer_id",
        "constraints": {"amount": {"maximum": 10}},
        "redact": ("card",),
        "headline": "Refund {amount} to {customer_id}",
    }
    assert schema.action == "shop.refund" and schema.declared
    with pytest.raises(ConfigError, match="unknown key `declared`"):
        load_config(text="upstreams: {shop: {command: x, tools: {refund: {declared: false}}}}")


# The request timeouts clients enforce whatever progress says: the TypeScript SDK's default.
CLIENT_REQUEST_TIMEOUT = 60.0


def test_a_call_waits_by_default_less_than_clients_wait_for_it_so_the_pending_answer_arrives() -> None:
    wait = load_config(text="upstreams: {a: {command: x}}").guard.approvals.wait
    # with a heartbeat's slack and the time it took to ask: the answer must beat the client's timeout
    assert wait + 10 <= CLIENT_REQUEST_TIMEOUT


def test_upstream_prompts_are_relayed_unless_an_upstream_says_decline() -> None:
    cfg = load_config(text="upstreams: {a: {command: x}, b: {url: 'http://y', elicitation: decline}}")
    assert cfg.upstreams["a"].elicitation == "relay"
    assert cfg.upstreams["b"].elicitation == "decline"


def test_undeclared_tool_is_unknown_and_pessimistic() -> None:
    cfg = load_config(text="upstreams: {a: {command: x}}")
    schema = cfg.action_schema("a", "whatever")
    assert schema.category is Category.UNKNOWN and not schema.declared


def test_claude_desktop_mcpservers_block_is_accepted() -> None:
    cfg = load_config(text='{"mcpServers": {"fs": {"command": "npx", "args": ["-y", "srv"]}}}')
    assert isinstance(cfg.upstreams["fs"], StdioUpstream)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("upstreams: [\n", ":2: invalid YAML"),
        ("upstreams:\n  a:\n    command: x\n    bogus: 1\n", ":4: at `upstreams.a.bogus`: unknown key `bogus`"),
        ("upstreams:\n  a:\n    command: x\n    env: {K: '${NOPE_X}'}\n", "`${NOPE_X}`"),
        ("upstreams:\n  a:\n    url: ftp://x\n", "url must start with http"),
        ("upstreams:\n  a: {command: x, url: http://y}\n", "both `command` and `url`"),
        ("upstreams:\n  a: {args: [x]}\n", "needs `command`"),
        ("upstreams:\n  a__b: {command: x}\n", "upstream name `a__b`"),
        ("upstreams:\n  'x;rm -rf': {command: x}\n", "upstream name"),
        ("upstreams:\n  a: {command: x, timeout: soon}\n", "`soon` is not a duration"),
        (
            "upstreams:\n  a:\n    command: x\n    elicitation: ask\n",
            ":4: at `upstreams.a.elicitation`: `ask` is not an elicitation mode; write `relay`",
        ),
        ("upstreams:\n  a:\n    command: x\n    tools: {t: {category: money}}\n", "upstreams.a.tools.t.category"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("guard:\n  http:\n    port: 99999\n", ":3: at `guard.http.port`"),
        ("guard:\n  approvals: {expire: .inf}\n", "guard.approvals.expire"),
        ("guard: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
        ("upstreams:\n  http:\n    url: ftp://x\n", ":3: at `upstreams.http.url`"),
        (
            "upstreams:\n  a:\n    command: x\n    tools:\n      t:\n        constraints: {amount: {maximum: lots}}\n",
            ":6: at `upstreams.a.tools.t.constraints`: the constraint on `amount` is not a valid JSON Schema",
        ),
    ],
)
def test_bad_config_names_line_and_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(text=text, environ={})
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


LIMITED = "upstreams:\n  shop:\n    command: x\n    tools:\n      refund:\n        limits:\n"


def test_limits_are_declared_next_to_constraints() -> None:
    cfg = load_config(
        text=LIMITED + "          - {window: 1h, calls: 20}\n"
        "          - {window: 24h, sum: amount, max: 2000, per: all}\n"
    )
    calls, total = cfg.upstreams["shop"].tools["refund"].limits
    assert (calls.window, calls.calls, calls.per) == (3600, 20, "actor")
    assert (total.window, total.sum, total.max, total.per) == (86400, "amount", 2000, "all")


@pytest.mark.parametrize(
    ("limit", "needle"),
    [
        ("{window: soon, calls: 20}", "limits.1.window`: `soon` is not a duration"),
        ("{window: 0s, calls: 20}", "limits.1.window`: `0s` must be longer than zero"),
        ("{window: 1h, calls: 2, sum: amount, max: 3}", "limits.1`: a limit counts `calls` or adds up an argument"),
        ("{window: 1h}", "limits.1`: a limit needs `calls: N`, or `sum: ARGUMENT` with `max: N`"),
        ("{window: 1h, sum: amount}", "limits.1`: `sum: amount` needs `max:`"),
        ("{window: 1h, max: 3}", "limits.1`: `max` needs `sum:`"),
        ("{window: 1h, sum: amount, max: -5}", "limits.1.max`: `-5` is not a positive finite number"),
        ("{window: 1h, sum: amount, max: .inf}", "limits.1.max`: `inf` is not a positive finite number"),
        ("{window: 1h, calls: 0}", "limits.1.calls`: `0` is not a positive whole number of calls"),
        ("{window: 1h, calls: 2.5}", "limits.1.calls`: `2.5` is not a positive whole number of calls"),
        ("{window: 1h, calls: 20, every: 2}", "limits.1.every`: unknown key `every`"),
        ("{window: 1h, calls: 20, per: session}", "limits.1.per`: `session` is not a way to count"),
    ],
)
def test_bad_limits_name_line_and_key(limit: str, needle: str) -> None:
    text = LIMITED + "          - {window: 1h, calls: 20}\n          - " + limit + "\n"
    with pytest.raises(ConfigError) as exc:
        load_config(text=text, environ={}, builtins={})
    message = str(exc.value)
    assert message.startswith("<config>:8: at `upstreams.shop.tools.refund.limits.1"), message
    assert needle in message
    assert "\n" not in message


def test_a_bad_limit_key_in_block_style_names_its_own_line() -> None:
    text = (
        LIMITED + "          - window: 1h\n            calls: 20\n          - window: 24h\n            sum: amount\n"
        "            max: -1\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(text=text, environ={})
    assert str(exc.value).startswith("<config>:11: at `upstreams.shop.tools.refund.limits.1.max`: `-1`")


def test_a_tool_listed_twice_cannot_silently_drop_its_constraints() -> None:
    # The second `refund:` would replace the first whole, limit and all: YAML keeps the last.
    text = """upstreams:
  shop:
    command: x
    tools:
      refund: {action: refund.create, category: financial, constraints: {amount: {maximum: 100}}}
      lookup: {action: order.read, category: read}
      refund: {action: refund.create, category: financial}
"""
    with pytest.raises(ConfigError) as exc:
        load_config(text=text, environ={})
    assert ":7: `upstreams.shop.tools.refund` is given twice (first on line 5)" in str(exc.value)


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("5m") == 300
    assert parse_duration(2) == 2
    # `.nan` and `.inf` are YAML floats: an approval that never expires, a permit ttl no call survives
    for bad in ("0s", "-1", True, "2 weeks", float("nan"), float("inf")):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("ttl", ["2h", "500ms"])
def test_a_permit_ttl_outside_what_a_permit_may_live_is_refused(ttl: str) -> None:
    with pytest.raises(ConfigError, match="the longest a permit may live"):
        load_config(text=f"guard:\n  permits: {{ttl: {ttl}}}\nupstreams: {{}}\n", environ={})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: &a [*a]\nupstreams: {}\n", "refers to the node that contains it"),
        (
            "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x'}]\n" for i in range(9))
            + "upstreams: {}\n",
            "expand to more than",
        ),
        ("upstreams:\n  shop:\n    command: x\n    env:\n      DB_PASSWORD: !Tr0ub4dor&3\n", "explicit tags"),
        ("upstreams:\n  shop:\n    command: x\n    env: {DB_PASSWORD: *Tr0ub4dor3}\n", "names no anchor"),
        ("upstreams:\n  shop:\n    command: x\n    env: {DB_PASSWORD: !!int Tr0ub4dor3}\n", "does not fit its"),
    ],
)
def test_attack_yaml_alias_bombs_self_references_and_tags_are_one_line_errors_that_quote_nothing(
    text: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as exc:
        load_config(text=text, environ={})
    assert "Tr0ub4dor" not in str(exc.value) and "\n" not in str(exc.value)


def test_an_upstream_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="upstream name"):
        load_config(text='upstreams:\n  "vault\\n": {command: x}\n', environ={})


def test_a_bad_url_is_refused_without_echoing_what_a_variable_expanded_to() -> None:
    with pytest.raises(ConfigError, match="must start with http") as exc:
        load_config(
            text="upstreams:\n  r: {url: 'mcp.example.com/v1?key=${KEY}'}\n", environ={"KEY": "EXPANDED-SECRET"}
        )
    assert "EXPANDED-SECRET" not in str(exc.value)


def test_a_proposed_schema_is_no_schema_until_accepted() -> None:
    text = (
        "upstreams:\n  fs:\n    command: fs-mcp\n    tools:\n"
        "      read_file: {proposed: true, action: fs.read_file, category: read, reversibility: full,"
        " blast_radius: single, sensitivity: public}\n"
    )
    proposed = load_config(text=text)
    assert proposed.action_schema("fs", "read_file") == ActionSchema.unknown("fs", "read_file")
    accepted = load_config(text=text.replace("proposed: true", "proposed: false"))
    schema = accepted.action_schema("fs", "read_file")
    assert schema.declared and schema.category.value == "read"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("guard: {aprovals: {wait: 5s}}", "at `guard.aprovals`: unknown key `aprovals`; did you mean `approvals`?"),
        ("guard: {approvals: {wiat: 5s}}", "unknown key `wiat`; did you mean `wait`?"),
        ("upstreams: {a: {url: 'http://127.0.0.1/mcp', header: {}}}", "unknown key `header`; did you mean `headers`?"),
        (
            "upstreams: {a: {command: x, tools: {t: {categroy: read}}}}",
            "unknown key `categroy`; did you mean `category`?",
        ),
        ("upstreams: {a: {command: x, tools: {t: {limits: [{window: 1h, call: 3}]}}}}", "did you mean `calls`?"),
        (
            "guard: {http: {xx: 1}}",
            "unknown key `xx`; the keys here are `allowed_origins`, `auth`, `host`, `port`, `token`",
        ),
    ],
)
def test_an_unknown_key_gets_a_did_you_mean_from_the_model_it_was_given_to(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(text=text)
    assert needle in str(exc.value)
