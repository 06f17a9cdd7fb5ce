"""Neural-network building blocks: Module and Parameter, layers, initialisers, model builders.

::

    from refnas import nn
    model = nn.MLP([64, 128, 10], seed=0)
    print(model)                       # nested repr, as PyTorch's
    model.num_parameters()             # 9,610
    nn.count_flops(model, (64,))       # FLOPs of one example's forward pass
"""
from refnas.nn import init
from refnas.nn.module import (IncompatibleKeys, Module, ModuleList, Parameter, RemovableHandle,
                              Sequential, StateDictError)
from refnas.nn.layers import (ACTIVATIONS, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                              Conv2d, Dropout, Flatten, GELU, Identity, LeakyReLU, Linear,
                              MaxPool2d, ReLU, Sigmoid, Tanh, activation)
from refnas.nn.models import (MLP, MODELS, BasicBlock, ResNet, SmallCNN, build_model, count_flops,
                              register_model, resnet18)

__all__ = [name for name in dir() if not name.startswith("_")]
