/*
 * petrel: distributed machine-learning training in C. This header includes every
 * public module header; each one documents its ownership and threading rules.
 */
#ifndef PETREL_PETREL_H
#define PETREL_PETREL_H

#include "petrel/core.h"
#include "petrel/tensor.h"
#include "petrel/autograd.h"
#include "petrel/data.h"
#include "petrel/nn.h"
#include "petrel/train.h"
#include "petrel/net.h"
#include "petrel/launch.h"
#include "petrel/hogwild.h"

#endif
