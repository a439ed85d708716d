/*
 * Hull VMM test guest for the PVH boot path: entered in 32-bit protected
 * mode with paging off and EBX = the hvm_start_info address. Checks the
 * start info's magic, prints the command line it points to, and asks for a
 * reset through the i8042 controller, which ends the VM.
 */
    .section .note.hull.pvh, "a"
    .align 4
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
pvh_start:
    mov $stack_top, %esp        /* PVH hands over no stack */
    cmpl $0x336ec578, (%ebx)
    jne bad
    mov $ok, %esi
    call puts
    mov 24(%ebx), %esi          /* cmdline_paddr (low 32 bits) */
    call puts
    mov $nl, %esi
    call puts
    jmp reset
bad:
    mov $badmsg, %esi
    call puts
reset:
    mov $0xfe, %al
    outb %al, $0x64
1:  jmp 1b
puts:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  ret

    .section .bss
    .align 16
    .skip 1024
stack_top:

    .section .rodata
ok:     .asciz "hull-payload: pvh entry, cmdline="
badmsg: .asciz "hull-payload: bad start_info magic\n"
nl:     .asciz "\n"
