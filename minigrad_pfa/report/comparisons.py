"""Two comparisons the PFA paper's claims rest on: KP beside PFA (E1, F1), explained with the
mechanism diagnostics, and whether F1's close ordering BP > PFA > PFA-o survives seeds.
"""
from __future__ import annotations

from .findings import PENDING, acc, acc_text, diff_se, noise_text, seed_noise, verdict
from .fmt import DASH, table
from .signfamily import mean_path_angle


def _final_layer_mean(group, key) -> float | None:
    """Mean over the group's complete runs of the last epoch's ``<layer>/<key>``, averaged
    over the layers whose feedback is used (as the path angle beside it)."""
    per_run = []
    for run in group or ():
        if not run.complete or not run.metrics:
            continue
        last = run.metrics[-1]
        vals = [v for k, v in last.items() if k.endswith("/" + key) and v is not None
                and not last.get(k[:-len(key)] + "feedback_unused")]
        if vals:
            per_run.append(sum(vals) / len(vals))
    return sum(per_run) / len(per_run) if per_run else None


def kp_section(groups, summaries) -> list[str]:
    lines = ["## KP beside PFA (E1, F1)", "",
             "Kolen-Pollack (`kp`, PFA's weight-decay schedule) against PFA and PFA-o. "
             "Mechanism diagnostics at the last epoch, mean over the complete seeds and the "
             "layers whose feedback is used: KP's relative "
             "mismatch ||W − B|| / ||W||, PFA's ||R − BᵀW|| / ||BᵀW||, and the path angle "
             "between the matrix each rule propagates with and W.", ""]
    for protocol in ("E1", "F1"):
        rows = []
        for label, key in (("KP", "kp_mismatch"), ("PFA", "pfa_mismatch"),
                           ("PFA-o", "pfa_mismatch"), ("BP", None)):
            s = summaries.get((protocol, label))
            m = acc(summaries, protocol, label)[0]
            angle = mean_path_angle(s) if s and m is not None else None
            mis = _final_layer_mean(groups.get((protocol, label)), key) if key else None
            rows.append([label, acc_text(summaries, protocol, label),
                         DASH if angle is None else f"{angle:.1f}°",
                         DASH if mis is None else f"{mis:.2g}"])
        lines += [f"### {protocol}", ""]
        lines += table(["rule", "test %", "mean path angle", "relative mismatch"], rows)
        lines += [_kp_statement(protocol, groups, summaries), ""]
    return lines


def _kp_statement(protocol, groups, summaries) -> str:
    (kp, _, n_kp), (pfa, _, n_pfa) = acc(summaries, protocol, "KP"), acc(summaries, protocol,
                                                                         "PFA")
    if kp is None or pfa is None:
        return f"Does PFA beat KP on {protocol}? {PENDING}."
    noise, used = seed_noise(groups, protocol, summaries)
    diff = pfa - kp
    v = verdict(diff, noise, +1, n=(n_pfa, n_kp))
    head = (f"PFA {pfa:.2f} vs KP {kp:.2f} ({diff:+.2f} points; {noise_text(noise, used)}): "
            + ("PFA beats KP here" if v == "agrees" else
               "KP beats PFA here" if v == "deviates" else "no difference beyond noise")
            + ".")
    a_kp = mean_path_angle(summaries[(protocol, "KP")])
    a_pfa = mean_path_angle(summaries[(protocol, "PFA")])
    mis = _final_layer_mean(groups.get((protocol, "KP")), "kp_mismatch")
    if a_kp is None or a_pfa is None:
        return head
    mis_pfa = _final_layer_mean(groups.get((protocol, "PFA")), "pfa_mismatch")
    fmt = (lambda v: DASH if v is None else f"{v:.2g}")
    why = (f" Mechanism: KP's feedback is closer to W than PFA's: path angle {a_kp:.1f}° "
           f"against {a_pfa:.1f}°, KP's B having shrunk its relative mismatch to W to "
           f"{fmt(mis)} (PFA's R to BᵀW: {fmt(mis_pfa)}); PFA's feedback B Bᵀ W keeps an "
           f"angle to W that its expansion ratio sets (E5), however small R − BᵀW gets."
           if a_kp < a_pfa else
           f" Mechanism: KP's path angle ({a_kp:.1f}°) is not below PFA's ({a_pfa:.1f}°): "
           f"its B is not closer to W (relative mismatch {fmt(mis)}).")
    if a_kp < a_pfa and v == "agrees":
        why += (" PFA's higher accuracy is therefore not explained by closer alignment "
                "(KP's is closer).")
    elif a_kp < a_pfa and v == "deviates":
        why += " Closer alignment and a higher accuracy are consistent."
    elif a_kp < a_pfa:
        why += " Closer alignment did not buy a measurable accuracy difference."
    return head + why


def seeds_section(groups, summaries, protocol="F1", claim=("BP", "PFA", "PFA-o"),
                  want=3) -> list[str]:
    """Mean ± std over seeds of ``claim``'s rules and whether their order is a result.

    A neighbouring pair in the measured order is *resolved* when its difference of means
    exceeds twice its standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)``.
    """
    lines = [f"## Seeds where {protocol}'s ordering is close", ""]
    stats = {r: acc(summaries, protocol, r) for r in claim}
    lines += table(["rule", "test % mean ± std", "seeds"],
                   [[r, acc_text(summaries, protocol, r), str(stats[r][2])] for r in claim])
    short = [r for r in claim if stats[r][2] < want]
    if short:
        return lines + [f"Is {' > '.join(claim)} a result or noise? {PENDING}: "
                        + ", ".join(f"{r} has {stats[r][2]} of {want} seeds" for r in short)
                        + ".", ""]
    order = sorted(claim, key=lambda r: -stats[r][0])
    pairs = []
    for a, b in zip(order, order[1:]):
        (ma, sa, na), (mb, sb, nb) = stats[a], stats[b]
        se = diff_se(sa, na, sb, nb)
        pairs.append((a, b, ma - mb, se, ma - mb > 2 * se))
    same = order == list(claim)
    resolved = all(p[4] for p in pairs)
    text = (f"Measured order over {want} seeds: "
            + " > ".join(f"{r} {stats[r][0]:.2f}" for r in order) + " ("
            + "; ".join(f"{a} − {b} = {d:.2f}, standard error {se:.2f}"
                        for a, b, d, se, _ in pairs) + "). ")
    claim_s = " > ".join(claim)
    if same and resolved:
        text += f"The seed-0 ordering {claim_s} is a result: every gap exceeds twice its standard error."
    elif same:
        text += (f"The means keep the seed-0 ordering {claim_s}, but it is noise: "
                 + ", ".join(f"{a} > {b}" for a, b, *_, ok in pairs if not ok)
                 + " is within twice its standard error.")
    else:
        text += (f"The seed-0 ordering {claim_s} does not survive: it was noise"
                 + ("" if resolved else " (and the measured order is not resolved either)")
                 + ".")
    if not any(p[4] for p in pairs):
        text += (f" No neighbouring pair is separated by more than twice the standard error "
                 f"of its difference: at {want} seeds {', '.join(claim[:-1])} and {claim[-1]} "
                 f"are indistinguishable on {protocol}.")
    return lines + [text, ""]
