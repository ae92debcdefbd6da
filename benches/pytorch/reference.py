# Not part of the project or its tests: run with any PyTorch CPU install to compare
# side by side with `cargo bench -p cnn-benches --bench conv` and `--bench train_step`.
# The reference network's layers and whole network on PyTorch CPU (2 threads), medians in ms,
# the same cases as cnn-benches' conv and train_step benches (batch 64, random data).
import sys, time, statistics, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
# the conv layers' batch (64 as the benches' ref_conv*_n64; 256 for ref_conv*_n256): argv[1]
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
def med(f, n=40):
    for _ in range(5): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)
rows = []
for name, cin, side, cout in [("conv1", 1, 28, 32), ("conv2", 32, 13, 64), ("conv3", 64, 5, 128)]:
    x = torch.rand(B, cin, side, side, requires_grad=True); w = torch.rand(cout, cin, 3, 3, requires_grad=True); b = torch.rand(cout, requires_grad=True)
    with torch.no_grad():
        fwd = med(lambda: F.conv2d(x, w, b))
    dy = torch.rand(B, cout, side - 2, side - 2)
    def fb():
        y = F.conv2d(x, w, b); torch.autograd.grad(y, (x, w, b), dy)
    rows.append((name, fwd, med(fb)))
x = torch.rand(64, 32, 26, 26, requires_grad=True); dy = torch.rand(64, 32, 13, 13)
pool = med(lambda: torch.autograd.grad(F.max_pool2d(x, 2), (x,), dy))
m = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
x = torch.rand(64, 1, 28, 28); y = torch.arange(64) % 10
opt = torch.optim.Adam(m.parameters(), 1e-3)
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
train = med(step)
with torch.no_grad():
    infer = med(lambda: m(x))
for name, f, fb in rows:
    print(f"{name}_n{B} forward {f:.3f} ms, forward+backward {fb:.3f} ms")
print(f"maxpool1_n64 forward+backward {pool:.3f} ms")
print(f"reference network n64: inference {infer:.2f} ms, Adam step {train:.2f} ms")
