# Not part of the project or its tests: whole epochs of ResNet-20 on Fashion-MNIST with any
# PyTorch CPU install, in the recipe of `cargo xtask train --model resnet20` (SGD, momentum 0.9,
# Nesterov, weight decay 5e-4 on the weights only, batch 128, learning rate 0.1 with cosine
# decay per step, a random 28x28 crop of the image zero-padded to 32x32 and a random horizontal
# flip; 55,000 training images, evaluated in eval mode), to compare images/s side by side with
# `cargo xtask train --model resnet20 --epochs N` (README, ResNet-20 speed). Reads the IDX files
# itself (no torchvision, no NumPy).
# usage: python resnet20_epoch.py [THREADS [EPOCHS [DATA_DIR]]]
import gzip, math, os, sys, time, torch, torch.nn.functional as F
from resnet20 import ResNet20

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
root = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
torch.set_num_threads(threads)


def idx(name):
    """An IDX file (gzipped or not) as a uint8 tensor of its shape."""
    path = os.path.join(root, name)
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


images = idx("train-images-idx3-ubyte").float().div_(255).unsqueeze(1)
labels = idx("train-labels-idx1-ubyte").long()
test_x = idx("t10k-images-idx3-ubyte").float().div_(255).unsqueeze(1)
test_y = idx("t10k-labels-idx1-ubyte").long()
train_x, train_y = images[:55000], labels[:55000]


def crop_flip(x):
    """Each image zero-padded to 32x32, a random 28x28 crop of it, flipped half the time."""
    padded = F.pad(x, (2, 2, 2, 2))
    out = torch.empty_like(x)
    offsets = torch.randint(0, 5, (len(x), 2))
    flips = torch.rand(len(x)) < 0.5
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        crop = padded[i, :, dy : dy + 28, dx : dx + 28]
        out[i] = crop.flip(-1) if flip else crop
    return out


torch.manual_seed(0)
model = ResNet20()
decay = [p for n, p in model.named_parameters() if p.dim() > 1]
rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=True)
batch = 128
steps_per_epoch = math.ceil(len(train_x) / batch)
total = steps_per_epoch * epochs
step = 0
print(f"torch {torch.__version__} threads {torch.get_num_threads()}")
for epoch in range(1, epochs + 1):
    model.train()
    order = torch.randperm(len(train_x))
    start = time.perf_counter()
    for b in range(steps_per_epoch):
        at = order[b * batch : (b + 1) * batch]
        x, y = crop_flip(train_x[at]), train_y[at]
        for group in opt.param_groups:
            group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        step += 1
    seconds = time.perf_counter() - start
    model.eval()
    correct, start = 0, time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(test_x), batch):
            correct += (model(test_x[b : b + batch]).argmax(1) == test_y[b : b + batch]).sum().item()
    infer = len(test_x) / (time.perf_counter() - start)
    print(f"epoch {epoch}: {seconds:.1f} s, {len(train_x) / seconds:.0f} images/s; test accuracy {100 * correct / len(test_x):.2f}%, inference {infer:.0f} images/s")
