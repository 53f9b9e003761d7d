"""Where `TimeVarying` fails on traffic with no rate change at all: a Poisson trace replayed
at utilization 0.6 and 0.85 on Table I, against PK and `TimeVarying` with 60-s and 600-s
windows. The window rates of a Poisson trace differ only by counting noise, which the model
takes for rate changes. Prints one row per (utilization, window).

Run: `python benchmarks/poisson_windows.py` (about a minute on 2 CPU cores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_tokens as jt


def main() -> None:
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
        tokens = jnp.asarray(jt.solve(w).tokens)
        mean_service = float(jt.service_moments(tokens, w)[0])
        rng = np.random.default_rng(0)
        print(
            "utilization  window  replay E[T] (95% CI)        PK     TimeVarying  max window load"
        )
        for rho in (0.6, 0.85):
            rate = rho / mean_service
            trace = jt.traffic.Trace(np.cumsum(rng.exponential(1 / rate, 20_000)))
            sim = jt.simulate(
                w, tokens, arrivals=jt.traffic.Replay(trace, utilization=rho), num_replications=4
            )
            s = sim.summary()["system_time"]
            at = w.replace(arrival_rate=jnp.asarray(rate))
            pk = float(jt.FIFO().mean_system_time(tokens, at))
            for window in (60.0, 600.0):
                tv = jt.TimeVarying.from_trace(trace.rescaled(rate), window)
                pred = float(tv.mean_system_time(tokens, at))
                peak = rho * float(np.max(np.asarray(tv.rate_factors)))
                print(
                    f"{rho:11.2f} {window:7.0f}  {float(s['mean']):6.2f} "
                    f"[{float(s['lower']):.2f}, {float(s['upper']):.2f}]   {pk:6.2f}  "
                    f"{pred:11.2f}  {peak:15.2f}"
                )


if __name__ == "__main__":
    main()
