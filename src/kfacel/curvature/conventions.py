r"""Notation, vec order and scaling of every curvature quantity in kfacel.

This module holds no code. Each numbered equation is cited where it is implemented and
pinned by a test: ``tests/curvature/test_conventions.py`` (vec order, folding, that every
equation is cited), the estimator tests ``tests/curvature/test_kfac.py``,
``tests/curvature/test_kfac_reduce.py``, ``tests/curvature/test_diagonal.py`` and
``tests/curvature/test_token_outputs.py`` (K1–K9 against brute force),
``tests/penalties/test_penalties.py`` (P1–P3) and
``tests/penalties/test_factored_damping.py`` (P4).

Index legend
------------
``n`` example (query), ``c`` candidate (class), ``s``/``r`` use of a layer within one
example (a sequence position, a candidate name, a repeated call), ``i``/``j`` layer input,
``o``/``p`` layer output, ``v`` vocabulary entry, ``h`` hidden unit. ``N`` examples, ``C``
candidates, ``R_n`` uses of a layer by example ``n``.

(K1) Layers as linear maps
    A covered layer is a linear map ``W~ = [W | b]: [d_out, d_in + 1]``; its input gets a
    constant 1 appended, ``ā = [a; 1]`` (no 1 and no bias column when the layer has no
    bias). ``nn.Linear`` acts on the last dimension, so an input ``[N, S, d_in]`` is S uses
    per example. ``nn.Conv1d`` (groups 1, dilation 1, zero padding) acts as
    ``weight.reshape(c_out, c_in * k)`` on unfolded patches ``[N, L_out, c_in * k]``
    (Grosse & Martens 2016, ICML, eq. 5), one use per output position. ``nn.Embedding``
    is ``weight.T: [d, V]`` acting on one-hot inputs, one use per token.

(K2) Per-example gradient
    With ``ℓ_n(y) = -log softmax(f(x_n))_y`` the loss of one example and ``g_{n,r} =
    ∂ℓ_n / ∂z_{n,r}`` the gradient w.r.t. the layer's output at use r,
    ``∇_n W~ = Σ_r g_{n,r} ā_{n,r}ᵀ``. Vectors are row-major: ``vec(M) = M.flatten()``, so
    ``vec(g āᵀ) = g ⊗ ā`` and the dense block of a layer is ``torch.kron(G, A)``.

(K3) Fisher
    ``F = 1/N Σ_n E_y[vec ∇_n(y) vec ∇_n(y)ᵀ]``, the mean over examples of per-example
    gradient outer products. Squared mini-batch gradients are not a Fisher.

(K4) Fisher kinds (the distribution of y in K3)
    ``empirical``: y is the gold label (the paper's eq. 3). ``sampled``: one y drawn from
    ``softmax(f(x_n))`` per example. ``exact``: every y weighted by its probability.

(K5) Kronecker factors, "expand" convention (Eschenhagen et al. 2023, NeurIPS, §3.1)
    ``A = 1/(Σ_n R_n) Σ_n Σ_r ā_{n,r} ā_{n,r}ᵀ`` and
    ``G = 1/N Σ_n E_y Σ_r g_{n,r} g_{n,r}ᵀ``, so that ``F_layer ≈ G ⊗ A``. For one example
    and one use (``N = R = 1``) this is exact: ``(g gᵀ) ⊗ (ā āᵀ) = vec(g āᵀ) vec(g āᵀ)ᵀ``.
    Positions marked as padding (``kfacel.positions``; for a mapping batch also its
    ``attention_mask [N, S]``, the Hugging Face name) are not uses: they enter neither
    sum nor count. An input whose first dimension is 1 while the batch has ``N > 1``
    examples (position ids ``[1, S]``) is the input of every row of the call: it counts
    as ``R`` inputs, and each row's output gradient enters G (as if it had been
    expanded to ``[R, S]``), with ``R`` the rows of the innermost active mask
    ``[R, S]`` whose ``R`` is a multiple of N (``N·C`` candidate names of N queries),
    else ``R = N``. Statistics are sums and counts, so K-FAC over several processes adds
    them with ``all_reduce`` before dividing and equals K-FAC over the pooled data.

(K6) Embedding
    The one-hot ``ā ā ᵀ`` is diagonal, so ``A`` is stored as a vector: ``A_v`` is the
    number of real uses of token v divided by ``Σ_n R_n``. Rows of the embedding table with
    ``A_v = 0`` carry no curvature.

(K7) Diagonal Fisher
    ``F_jj = 1/N Σ_n E_y[(∇_n θ)_j²]`` from exact per-example gradients (never squared
    mini-batch gradients). For a layer used once per example, ``(∇_n W~)²_{oi} = g_o² ā_i²``.

(K8) Kronecker factors, "reduce" convention (Eschenhagen et al. 2023, NeurIPS, §3)
    The ``U_n`` real uses of a layer by example ``n`` (positions, candidates and calls
    in that example's forward; padding excluded) are aggregated before the outer
    products: ``ā_n = [(1/U_n) Σ_u a_{n,u}; 1]`` (inputs averaged, then the bias 1) and
    ``ĝ_n = Σ_u g_{n,u}`` (output gradients summed), so that
    ``A = 1/N_A Σ_{n: U_n > 0} ā_n ā_nᵀ`` and ``G = 1/N Σ_n E_y ĝ_n ĝ_nᵀ``, with ``N_A``
    the number of examples that use the layer (``N`` unless a layer skips examples).
    As in K5, A is a mean over what it averages and G carries the Fisher's 1/N: this is
    curvlinops' ``kfac_approx="reduce"`` (mean over the weight-sharing dimension for
    the input, sum for the gradient, both divided by N). When every use of an example
    shares one input (``a_{n,u} = a_n``) its gradient is ``ĝ_n ā_nᵀ`` exactly, so for
    ``N = 1`` ``G ⊗ A`` equals the Fisher block. Embeddings keep K5–K6 (their averaged
    one-hot inputs would make A a dense ``[V, V]`` matrix); reduce applies to Linear and
    Conv1d (on unfolded patches).

(K9) Several loss terms per example (token outputs)
    Logits ``[N, S, C]`` with labels ``[N, S]`` give example n the loss terms
    ``ℓ_{n,s}(y) = -log softmax(f(x_n)_s)_y`` at its labelled positions
    ``s ∈ T_n`` (a label of -100 is no term: padding, sub-word continuations, unmasked
    tokens of a masked LM). The terms of one example are **summed**, examples are
    **averaged**: ``ℓ_n = Σ_{s∈T_n} ℓ_{n,s}`` (the log-likelihood of the example's
    labels, independent given x_n) and ``F = 1/N Σ_n E_{y_n}[∇ℓ_n ∇ℓ_nᵀ]``, with N
    counting every example of the batches (also one without a term). K2–K8 apply with
    ``g_{n,r} = ∂ℓ_n/∂z_{n,r}`` of this ℓ_n. ``empirical``: the gold labels of all
    terms, one backward pass. ``sampled``: one label per term drawn from its own
    softmax, one backward pass (its cross terms vanish in expectation, so it is unbiased
    for the exact Fisher). ``exact``: ``E_{y_n}[∇ℓ_n ∇ℓ_nᵀ] = Σ_{s∈T_n} Σ_c p_{n,s}(c)
    ∇ℓ_{n,s}(c) ∇ℓ_{n,s}(c)ᵀ`` (cross terms have zero mean), one backward pass per
    term position and class. For one term per example (``[N, C]`` logits, ``|T_n| =
    1``) this is K3–K4 unchanged. The Hugging Face training loss is the mean over the
    batch's terms, so ``½ΔᵀFΔ`` predicts the rise of the summed loss per example, that
    is of the per-term loss times the mean number of terms per example.

(K10) Low-rank Kronecker factors (optional; ``compress_factors``)
    A factor ``M: [p, p]`` (PSD) may be kept as its top k eigenpairs ``U: [p, k]``
    (orthonormal columns), ``s: [k]`` and the mean of the p − k others ``σ = (tr M − Σ
    s) / (p − k)``: ``M ≈ U diag(s) Uᵀ + σ (I − U Uᵀ)``. It keeps the top-k directions
    and the trace exactly (eigenvalues below 0 by rounding are taken as 0), and stores
    ``p·k + k + 1`` numbers instead of ``p(p+1)/2``. ``M d = σ d + U ((s − σ) ⊙ (Uᵀ
    d))`` costs ``2pk`` per column, so a layer's ``G Δ A`` (P3) costs ``O(o·i·k)``
    instead of ``O(o·i·(o+i))``. For a LoRA adapter of rank r (``A: [r, d_in]``, ``B:
    [d_out, r]``) the ``[d_in, d_in]`` and ``[d_out, d_out]`` factors at k = r make the
    state about the adapter's size.

(P1) Penalty
    ``R(θ) = ½ Σ_t λ_t (θ − θ*_t)ᵀ (F_t + δ I) (θ − θ*_t)``: one term per finished task t
    with anchor ``θ*_t``, curvature ``F_t``, strength ``λ_t`` and damping ``δ ≥ 0`` (the
    prior precision of Ritter et al. 2018, NeurIPS; 0 in the paper). Damping is applied
    where a factor is used, never stored in it. Since ``F_t`` is a mean over examples,
    ``λ_t = N_t`` is the Laplace posterior of the sum-reduced loss over the N_t examples of
    task t; the trainer minimizes the mean loss plus ``R``.

(P2) Kronecker quadratic form
    For ``Δ = W~ − W~*: [d_out, d_in + 1]``,
    ``vec(Δ)ᵀ (G ⊗ A) vec(Δ) = Σ_{o,i} (G Δ A)_{oi} Δ_{oi}``: two matrix products per layer,
    no Kronecker product formed. For an Embedding (diagonal A), ``Σ_{o,i} (G Δ)_{oi} A_i Δ_{oi}``
    over the rows with ``A_i > 0`` only.

(P3) Penalty gradient
    ``∂/∂Δ ½ vec(Δ)ᵀ (G ⊗ A + δ I) vec(Δ) = G Δ A + δ Δ`` (G and A symmetric).

(P4) Factored Tikhonov damping (optional; ``damping_kind="factored"``)
    ``G ⊗ A + δ I`` in (P1)–(P3) becomes ``(G + γ_G I) ⊗ (A + γ_A I)`` with
    ``γ_A = π√δ``, ``γ_G = √δ/π`` and ``π² = (tr A / dim A) / (tr G / dim G)`` (Martens &
    Grosse 2015, §6.3): the same ``δ I`` plus ``γ_G (I ⊗ A) + γ_A (G ⊗ I)``, curvature along
    the inputs the old task used and the outputs it was sensitive to. The gradient is
    (P3) with the damped factors: ``(G + γ_G I) Δ (A + γ_A I)``. Parameters with a
    diagonal Fisher (uncovered) keep ``F_jj + δ``.
"""
