"""The lab's own steps, one module per service: what the Nova guide assumes is already there.

:mod:`~novaconsole.lab.stack.host` (host packages, venvs, noVNC's files, the instances
directory), :mod:`~novaconsole.lab.stack.rabbit`, :mod:`~novaconsole.lab.stack.memcached`,
:mod:`~novaconsole.lab.stack.keystone` (with clouds.yaml and admin-openrc),
:mod:`~novaconsole.lab.stack.glance`, :mod:`~novaconsole.lab.stack.placement`, a Neutron API
server in :mod:`~novaconsole.lab.stack.neutron` (Nova 34 cannot list servers without it) and
:mod:`~novaconsole.lab.stack.finish` (a test image and flavor, every Nova service up). Each
builds on the generic steps of :mod:`novaconsole.lab.generic`; what several share is in
:mod:`~novaconsole.lab.stack.common`. Nova itself is provisioned by the controller and
compute plugins; :func:`novaconsole.lab.runner.lab_steps` interleaves these with theirs by
phase.
"""
