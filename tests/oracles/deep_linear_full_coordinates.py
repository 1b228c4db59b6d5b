# Independent dense implementation of the deep linear propagator in full coordinates
# (every Φ entry; G, A, B per train point; no symmetry): the oracle for
# crates/runtime/src/deep_linear_propagator.rs. Slow; tiny problems only. numpy.
import numpy as np

class Net:
    def __init__(s, kx, y, p, L, gamma0, eta, steps, centered):
        s.n = kx.shape[0]; s.p = p; s.L = L; s.g0 = gamma0; s.nt = steps + 1
        s.c = eta * gamma0 / p; s.y = y; s.centered = centered
        s.phi0 = np.tile(kx, (s.nt, s.nt))
        s.gtop = np.ones((s.nt * p, s.nt * p))

    def delta(s, f):  # f: nt x n
        d = s.y[None, :] - f[:, :s.p]
        if s.centered:
            d = d + f[0:1, :s.p]
        return d

    def site(s, phip, gn, f, rphi, rg):
        """One layer's closed form. Returns fields (Hu, Hr, Zu, Zr) and second moments."""
        n, p, nt, c = s.n, s.p, s.nt, s.c
        D = s.delta(f)
        C = rphi.copy()
        E = rg.copy()
        for k in range(nt):
            for j in range(k):
                C[k*n:(k+1)*n, j*p:(j+1)*p] += c * phip[k*n:(k+1)*n, j*n:j*n+p] * D[j][None, :]
                E[k*p:(k+1)*p, j*n:j*n+p] += c * gn[k*p:(k+1)*p, j*p:(j+1)*p] * D[j][None, :]
        Zr = np.linalg.inv(np.eye(nt*p) - E @ C)
        Zu = Zr @ E
        Hr = C @ Zr
        Hu = np.eye(nt*n) + C @ Zu
        return Hu, Hr, Zu, Zr

    def omega(s, phip, gn, F):
        """Second moments of v = (h, z, rho_hat, mu_hat)."""
        Hu, Hr, Zu, Zr = F
        n, p, nt = s.n, s.p, s.nt
        hh = Hu @ phip @ Hu.T + Hr @ gn @ Hr.T
        zz = Zu @ phip @ Zu.T + Zr @ gn @ Zr.T
        hz = Hu @ phip @ Zu.T + Hr @ gn @ Zr.T
        N1, N2 = nt*n, nt*p
        dim = 2*N1 + 2*N2  # h (N1), z (N2), rho (N2), mu (N1)
        O = np.zeros((dim, dim))
        ih, iz, ir, im = 0, N1, N1+N2, N1+2*N2
        O[ih:iz, ih:iz] = hh; O[iz:ir, iz:ir] = zz
        O[ih:iz, iz:ir] = hz; O[iz:ir, ih:iz] = hz.T
        O[ih:iz, ir:im] = Hr; O[ir:im, ih:iz] = Hr.T
        O[ih:iz, im:] = Hu; O[im:, ih:iz] = Hu.T
        O[iz:ir, ir:im] = Zr; O[ir:im, iz:ir] = Zr.T
        O[iz:ir, im:] = Zu; O[im:, iz:ir] = Zu.T
        return O, (ih, iz, ir, im)

    # psi index pairs per layer (l = 1..L)
    def psi_pairs(s, l):
        n, p, nt, L = s.n, s.p, s.nt, s.L
        N1, N2 = nt*n, nt*p
        ih, iz, ir, im = 0, N1, N1+N2, N1+2*N2
        blocks = []
        if l < L:  # Phi^l, consumed by l+1
            a, b = np.meshgrid(np.arange(N1), np.arange(N1), indexing='ij')
            blocks.append(('phi', ih + a.ravel(), ih + b.ravel()))
        if l > 1:  # G^l consumed by l-1
            a, b = np.meshgrid(np.arange(N2), np.arange(N2), indexing='ij')
            blocks.append(('g', iz + a.ravel(), iz + b.ravel()))
        if l < L:  # A^l(a, j) = h_a rho_j
            a, b = np.meshgrid(np.arange(N1), np.arange(N2), indexing='ij')
            blocks.append(('A', ih + a.ravel(), ir + b.ravel()))
        if l > 1:  # B^l(a, j) = mu_a z_j
            a, b = np.meshgrid(np.arange(N1), np.arange(N2), indexing='ij')
            blocks.append(('B', im + a.ravel(), iz + b.ravel()))
        if l == L:  # f(k, mu) = z(k, 0) h(k, mu) / gamma0
            k, mu = np.meshgrid(np.arange(nt), np.arange(n), indexing='ij')
            blocks.append(('f', iz + (k*p).ravel(), ih + (k*n + mu).ravel()))
        return blocks

def solve_saddle(net, sweeps=None):
    n, p, nt, L = net.n, net.p, net.nt, net.L
    N1, N2 = nt*n, nt*p
    phi = [net.phi0] + [np.zeros((N1, N1)) for _ in range(L)]
    g = [None] + [np.zeros((N2, N2)) for _ in range(L)] + [net.gtop]
    Rphi = [np.zeros((N1, N2)) for _ in range(L + 2)]
    Rg = [np.zeros((N2, N1)) for _ in range(L + 2)]
    f = np.zeros((nt, n))
    F = [None] * (L + 1)
    for it in range(sweeps or (nt * (L + 1) + 2)):
        for l in range(1, L + 1):
            F[l] = net.site(phi[l-1], g[l+1], f, Rphi[l-1], Rg[l+1])
            Hu, Hr, Zu, Zr = F[l]
            phi[l] = Hu @ phi[l-1] @ Hu.T + Hr @ g[l+1] @ Hr.T
            g[l] = Zu @ phi[l-1] @ Zu.T + Zr @ g[l+1] @ Zr.T
            Rphi[l] = Hr; Rg[l] = Zu
        O, _ = net.omega(phi[L-1], g[L+1], F[L])
        fnew = np.array([[O[N1 + k*p, k*n + mu] for mu in range(n)] for k in range(nt)]) / net.g0
        err = np.abs(fnew - f).max(); f = fnew
    return dict(phi=phi, g=g, Rphi=Rphi, Rg=Rg, f=f, F=F, err=err)

def layer_means(net, l, sol, phip, gn, f):
    F = net.site(phip, gn, f, sol['Rphi'][l-1], sol['Rg'][l+1])
    O, _ = net.omega(phip, gn, F)
    out = []
    for name, a, b in net.psi_pairs(l):
        v = O[a, b]
        if name == 'f': v = v / net.g0
        out.append(v)
    return np.concatenate(out)

def propagator(net, sol, jsign=1.0, eps=1e-6):
    n, p, nt, L = net.n, net.p, net.nt, net.L
    # global index of each psi block
    offs = {}; tot = 0
    for l in range(1, L + 1):
        for name, a, b in net.psi_pairs(l):
            offs[(name, l)] = (tot, len(a)); tot += len(a)
    K = np.zeros((tot, tot)); Dc = np.zeros((tot, tot))
    for l in range(1, L + 1):
        phip = sol['phi'][l-1]; gn = sol['g'][l+1]; f = sol['f']
        F = net.site(phip, gn, f, sol['Rphi'][l-1], sol['Rg'][l+1])
        O, _ = net.omega(phip, gn, F)
        pr = net.psi_pairs(l)
        a = np.concatenate([x[1] for x in pr]); b = np.concatenate([x[2] for x in pr])
        scale = np.concatenate([np.full(len(x[1]), 1/net.g0 if x[0]=='f' else 1.0) for x in pr])
        Kl = O[np.ix_(a, a)] * O[np.ix_(b, b)] + O[np.ix_(a, b)] * O[np.ix_(b, a)]
        Kl *= scale[:, None] * scale[None, :]
        r0 = offs[pr[0][0], l][0]; m = len(a)
        K[r0:r0+m, r0:r0+m] = Kl
        # open-loop sensitivities to q_c inputs: phi^{l-1}, g^{l+1}, f
        inputs = []
        if l > 1: inputs.append(('phi', l-1))
        if l < L: inputs.append(('g', l+1))
        inputs.append(('f', L))
        for (name, src) in inputs:
            c0, cm = offs[(name, src)]
            for idx in range(cm):
                args = [phip.copy(), gn.copy(), f.copy()]
                ai = {'phi': 0, 'g': 1, 'f': 2}[name]
                pl = args[ai].copy(); mi = args[ai].copy()
                pl.flat[idx] += eps; mi.flat[idx] -= eps
                ap = list(args); ap[ai] = pl
                am = list(args); am[ai] = mi
                Dc[r0:r0+m, c0+idx] = (layer_means(net, l, sol, *ap) - layer_means(net, l, sol, *am)) / (2*eps)
    J = np.zeros((tot, tot))
    for l in range(1, L):
        a0, am_ = offs[('A', l)]; b0, bm = offs[('B', l+1)]
        assert am_ == bm
        J[a0 + np.arange(am_), b0 + np.arange(bm)] = jsign
        J[b0 + np.arange(bm), a0 + np.arange(am_)] = jsign
    return K, Dc, J, offs

def sigma_f(net, K, Dc, J, offs, variant='lead'):
    tot = K.shape[0]
    M = np.eye(tot) - Dc
    f0, fm = offs[('f', net.L)]
    fi = f0 + np.arange(fm)
    if variant == 'lead':
        Y = np.linalg.solve(M, K).T     # K M^{-T}
        Z = M - Y @ J
        S = np.linalg.solve(Z, Y[:, fi])[fi]
    elif variant == 'first':  # (I - Dc - KJ)^{-1} K (.)^{-T}
        A = M - K @ J
        X = np.linalg.solve(A, K)
        S = np.linalg.solve(A, X.T).T[np.ix_(fi, fi)]
    elif variant == 'sandwich_noJ':
        X = np.linalg.solve(M, K)
        S = np.linalg.solve(M, X.T).T[np.ix_(fi, fi)]
    # observable: f(k) - centered f(0)
    nt, n = net.nt, net.n
    T = np.eye(fm)
    if net.centered:
        for k in range(nt):
            for mu in range(n):
                T[k*n+mu, mu] -= 1
    S = T @ S @ T.T
    return np.diag(S).reshape(nt, n)


if __name__ == "__main__":
    # The numbers hard-coded in deep_linear_propagator's matches_full_coordinate_implementation:
    # data set of tests/common (P = 3, Q = 2, D = 16, seed 5), η = 0.5, steps = 3.
    # Prints N·Var f at steps 3 and 1 (3 train then 2 test points).
    kx = np.array([1.1992948174834304, -0.13346075338945645, -0.08196819984278476, -0.15779457375384767, -0.3106372471758441, -0.13346075338945645, 0.6958460623560827, 0.1994112871311164, 0.17754202560436197, -0.1130025908514783, -0.08196819984278476, 0.1994112871311164, 0.6146064950172428, 0.01309223029649008, -0.12312660226843124, -0.15779457375384767, 0.17754202560436197, 0.01309223029649008, 0.854207012478198, -0.059019225725458944, -0.3106372471758441, -0.11300259085147829, -0.12312660226843122, -0.05901922572545898, 0.8432452535644288]).reshape(5, 5)
    y = np.array([-0.18203987808287916, 0.5010440178507156, 0.04156843353562947])
    for (L, g0, steps) in [(2, 1.5, 3), (3, 0.5, 3), (2, 0.01, 3), (1, 1.5, 3)]:
        net = Net(kx, y, 3, L, g0, 0.5, steps, g0 < 0.05)
        sol = solve_saddle(net)
        K, Dc, J, offs = propagator(net, sol)
        S = sigma_f(net, K, Dc, J, offs, 'lead')
        print(L, g0, steps, repr(S[-1].tolist()), repr(S[1].tolist()), flush=True)
