# Not part of the project or its tests: run with any PyTorch CPU install to compare
# side by side with `cargo bench -p cnn-benches --bench train_step` (README, ResNet-20 speed).
# ResNet-20 (option A shortcuts, 1x28x28 input, 269,434 parameters) on PyTorch CPU:
# median ms of a training step (SGD, momentum 0.9, Nesterov, wd 5e-4) and of inference, batch 128.
import sys, time, statistics, torch, torch.nn as nn, torch.nn.functional as F
class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.pad = cout - cin; s.stride = stride
    def forward(s, x):
        y = F.relu(s.b1(s.c1(x))); y = s.b2(s.c2(y))
        sc = x
        if s.stride != 1 or s.pad:
            sc = x[:, :, ::s.stride, ::s.stride]
            sc = F.pad(sc, (0, 0, 0, 0, s.pad // 2, s.pad - s.pad // 2))
        return F.relu(y + sc)
class ResNet20(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv = nn.Conv2d(1, 16, 3, 1, 1, bias=False); s.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1)); cin = cout
        s.layers = nn.Sequential(*layers); s.fc = nn.Linear(64, 10)
    def forward(s, x):
        x = F.relu(s.bn(s.conv(x))); x = s.layers(x)
        return s.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    torch.manual_seed(0)
    m = ResNet20()
    assert sum(p.numel() for p in m.parameters()) == 269434
    x = torch.rand(128, 1, 28, 28); y = torch.arange(128) % 10
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    def step():
        opt.zero_grad(); loss = F.cross_entropy(m(x), y); loss.backward(); opt.step()
    def timed(f, n):
        ts = []
        for _ in range(n):
            t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    m.train()
    for _ in range(5): step()
    train = timed(step, int(sys.argv[2]) if len(sys.argv) > 2 else 30)
    m.eval()
    with torch.no_grad():
        for _ in range(5): m(x)
        infer = timed(lambda: m(x), 60)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}: train step {train:.1f} ms, inference {infer:.1f} ms")
