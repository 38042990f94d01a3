// Shared by the Sinkhorn update kernels (prepended to the files whose leading lines include
// `// requires: lib/ot_potential.wgsl`): the end of one potential update for "self" index s, given
//   lse = logsumexp_o (pot_other_o / eps + lw_other_o - C(s, o) / eps):
//   log r_s = pot_self_s / eps + lw_self_s + lse             (log of the plan's sum along s)
//   resid_s = exp(log r_s) - goal_s when flags bit 1 is set, goal_s = w_self_s (balanced) or
//             w_self_s exp(-pot_self_s / rho) (flags bit 2: unbalanced)
//   pot_self_s <- tau (pot_self_s - eps (log r_s - lw_self_s))
// The including file declares the storage arrays w_self, lw_self, pot_self (read_write) and resid
// (read_write) at module scope.

fn finish_potential(s: u32, lse: f32, flags: u32, eps: f32, tau: f32, rho: f32) {
    let old = pot_self[s];
    let log_r = old * (1.0 / eps) + lw_self[s] + lse;
    if ((flags & 2u) != 0u) {
        var goal = w_self[s];
        if ((flags & 4u) != 0u) {
            goal = w_self[s] * exp(-old / rho);
        }
        resid[s] = exp(log_r) - goal;
    }
    pot_self[s] = tau * (old - eps * (log_r - lw_self[s]));
}
