"""Draw docs/scaling-out.svg: the scaled-out deployment the README's "Scaling out" section describes.

    python docs/make_scaling_out_svg.py        # rewrites docs/scaling-out.svg (no dependencies)

Clients reach stateless routers through a load balancer. Each router runs `etr-hub serve
--meta-url`: it holds no model weights; the meta model runs in an engine serving the checkpoint
`etr-hub export meta` wrote (its expert tokens baked in), which batches every router's requests.
All routers share one PostgreSQL registry (and the store of token files); experts run on vLLM
(one base model, many LoRA experts) or any OpenAI-compatible server.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

W, H = 980, 530
INK, MUTED = "#1f2933", "#52606d"
HUB, DB, ENGINE, CLIENT = "#e3f2fd", "#fff4e5", "#e8f5e9", "#f3e5f5"
EDGE = {"hub": "#1e88e5", "db": "#f57c00", "engine": "#43a047", "client": "#8e24aa"}


def box(
    x: float, y: float, w: float, h: float, fill: str, stroke: str, title: str, lines: list[str] = (), radius: int = 10
) -> str:
    parts = [
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{radius}" fill="{fill}" stroke="{stroke}" '
        'stroke-width="1.6"/>',
        f'<text x="{x + w / 2}" y="{y + 22}" text-anchor="middle" font-weight="bold" font-size="14" fill="{INK}">'
        f"{escape(title)}</text>",
    ]
    for i, line in enumerate(lines):
        parts.append(
            f'<text x="{x + w / 2}" y="{y + 42 + 16 * i}" text-anchor="middle" font-size="12" fill="{MUTED}">'
            f"{escape(line)}</text>"
        )
    return "\n".join(parts)


def arrow(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    color: str,
    label: str = "",
    dashed: bool = False,
    both: bool = False,
    dx: float = 0,
    dy: float = -6,
) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    start = f' marker-start="url(#tail-{color[1:]})"' if both else ""
    out = (
        f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="2"{dash}{start} '
        f'marker-end="url(#head-{color[1:]})"/>'
    )
    if label:
        out += (
            f'\n<text x="{(x1 + x2) / 2 + dx}" y="{(y1 + y2) / 2 + dy}" text-anchor="middle" font-size="11" '
            f'fill="{color}">{escape(label)}</text>'
        )
    return out


def markers() -> str:
    defs = []
    for color in EDGE.values():
        c = color[1:]
        defs.append(
            f'<marker id="head-{c}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
        defs.append(
            f'<marker id="tail-{c}" viewBox="0 0 10 10" refX="1" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto">'
            f'<path d="M10,0 L0,5 L10,10 z" fill="{color}"/></marker>'
        )
    return "<defs>" + "".join(defs) + "</defs>"


def drawing() -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        markers(),
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="30" text-anchor="middle" font-size="18" font-weight="bold" fill="{INK}">'
        "etr-hub scaled out: stateless routers, engines that batch, one registry</text>",
    ]
    # clients and the load balancer
    parts.append(box(30, 60, 190, 60, CLIENT, EDGE["client"], "OpenAI clients", ["openai SDK, curl, apps"]))
    parts.append(
        box(30, 200, 190, 80, CLIENT, EDGE["client"], "load balancer", ["TLS, Bearer key", "health: GET /health"])
    )
    parts.append(arrow(125, 120, 125, 198, EDGE["client"], "/v1/chat/completions", dx=0, dy=4))
    # hub replicas: the meta model stays here (routing needs its hidden states)
    ys = [60, 205, 350]
    for i, y in enumerate(ys):
        parts.append(
            box(
                290,
                y,
                300,
                125,
                HUB,
                EDGE["hub"],
                f"router {i + 1}: etr-hub serve --meta-url",
                [
                    "no model weights (tokenizer, names)",
                    "reads the routing token the meta",
                    "engine emits; hands over the turn",
                    "many requests at once; 429 when full",
                ],
            )
        )
        parts.append(arrow(222, 240, 288, y + 40, EDGE["client"]))
    # the shared registry, read by every replica at load
    parts.append(
        box(
            30,
            370,
            190,
            105,
            DB,
            EDGE["db"],
            "PostgreSQL",
            ["the shared registry:", "experts, versions, tokens", "+ the store on shared disk"],
        )
    )
    for y in ys:
        parts.append(
            f'<path d="M290,{y + 105} C255,{y + 105} 255,422 222,422" fill="none" stroke="{EDGE["db"]}" '
            f'stroke-width="2" stroke-dasharray="6 4" marker-end="url(#head-{EDGE["db"][1:]})"/>'
        )
    parts.append(
        f'<text x="125" y="500" text-anchor="middle" font-size="11" fill="{EDGE["db"]}">ETR_HUB_DATABASE_URL=</text>'
    )
    parts.append(
        f'<text x="125" y="514" text-anchor="middle" font-size="11" fill="{EDGE["db"]}">postgresql+psycopg://…</text>'
    )
    # experts on serving engines, reached over one bus
    bus = 640
    parts.append(
        f'<line x1="{bus}" y1="{ys[0] + 62}" x2="{bus}" y2="{ys[-1] + 62}" stroke="{EDGE["engine"]}" stroke-width="2"/>'
    )
    for y in ys:
        parts.append(
            f'<line x1="592" y1="{y + 62}" x2="{bus}" y2="{y + 62}" stroke="{EDGE["engine"]}" stroke-width="2"/>'
        )
    engines = [
        (
            55,
            110,
            "meta engine: vLLM (GPU)",
            ["vllm serve ./meta-etr (the export)", "head [W_V; W_E]: <|expert:NAME|>", "batches all routers' requests"],
        ),
        (
            185,
            110,
            "expert engine: vLLM (GPU)",
            ["vllm serve BASE --enable-lora", "--lora-modules astronomy=… law=…", "many LoRA experts, batched"],
        ),
        (315, 95, "any OpenAI-compatible server", ["SGLang, TGI, llama.cpp server,", "transformers serve"]),
    ]
    for y, h, title, lines in engines:
        parts.append(box(690, y, 260, h, ENGINE, EDGE["engine"], title, lines))
        mid = min(max(y + h / 2, ys[0] + 62), ys[-1] + 62)
        parts.append(arrow(bus, mid, 688, y + h / 2, EDGE["engine"]))
    for y, note in [
        (440, "an expert token at the routing position →"),
        (455, "that expert continues the turn (/v1/completions);"),
        (470, "one that fails → the meta engine finishes,"),
        (485, "and the route record says fell_back"),
    ]:
        parts.append(f'<text x="820" y="{y}" text-anchor="middle" font-size="11" fill="{EDGE["engine"]}">{note}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    out = Path(__file__).with_name("scaling-out.svg")
    out.write_text(drawing(), encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
